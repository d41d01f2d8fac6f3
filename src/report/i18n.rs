//! Word catalogues. Each report declares its own catalogue with `catalogue!`; every entry must
//! give both the English and the Chinese text, so a section exists in both languages or neither.

/// Declares a catalogue enum whose `text(lang)` returns the entry in that language.
///
/// ```
/// oomdoc::catalogue! { pub enum W { Title => ("Problem analysis", "问题分析") } }
/// assert_eq!(W::Title.text(oomdoc::report::Lang::Zh), "问题分析");
/// ```
#[macro_export]
macro_rules! catalogue {
    ($vis:vis enum $name:ident { $($key:ident => ($en:expr, $zh:expr)),* $(,)? }) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        #[allow(dead_code)]
        $vis enum $name { $($key),* }
        impl $name {
            #[allow(dead_code)]
            pub fn text(self, lang: $crate::report::Lang) -> &'static str {
                match lang {
                    $crate::report::Lang::En => match self { $($name::$key => $en),* },
                    $crate::report::Lang::Zh => match self { $($name::$key => $zh),* },
                }
            }
        }
    };
}

/// Fills a template: `{}` takes the next argument, `{0}`, `{1}`... a given one (for word order
/// that differs between languages). `{{` and `}}` are literal braces.
pub fn fill(template: &str, args: &[&dyn std::fmt::Display]) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut next = 0;
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let mut idx = String::new();
                for d in chars.by_ref() {
                    if d == '}' {
                        break;
                    }
                    idx.push(d);
                }
                let i = if idx.is_empty() {
                    next += 1;
                    next - 1
                } else {
                    idx.parse().unwrap_or(usize::MAX)
                };
                match args.get(i) {
                    Some(a) => out.push_str(&a.to_string()),
                    None => out.push_str("{?}"),
                }
            }
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Lang;

    crate::catalogue! { enum W { Hello => ("hello {}", "你好 {}"), Order => ("{0} of {1}", "{1} 的 {0}") } }

    #[test]
    fn catalogue_and_fill() {
        assert_eq!(fill(W::Hello.text(Lang::En), &[&"x"]), "hello x");
        assert_eq!(fill(W::Order.text(Lang::Zh), &[&1, &2]), "2 的 1");
        assert_eq!(fill("{{}} {}", &[&3]), "{} 3");
        assert_eq!(fill("{} {}", &[&3]), "3 {?}");
    }
}
