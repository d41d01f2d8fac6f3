//! The framework version range that a message's exact wording implies (oom-formats.md §2–§3).
//! Each clue is a half-open range `[lo, hi)` of `major.minor`; the result is their intersection.
//! The exception class (`RuntimeError`, `torch.cuda.OutOfMemoryError`, ...) is a weaker clue: a
//! wrapper may re-raise under another name, so it is dropped when it contradicts the wording.

/// `major.minor` as one ordered number.
pub const fn v(major: u32, minor: u32) -> u32 {
    major * 100 + minor
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    pub lo: Option<u32>,
    pub hi: Option<u32>,
}

impl Range {
    pub fn new(lo: Option<u32>, hi: Option<u32>) -> Range {
        Range { lo, hi }
    }
    fn intersect(self, o: Range) -> Range {
        let lo = match (self.lo, o.lo) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let hi = match (self.hi, o.hi) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Range { lo, hi }
    }
    fn is_empty(self) -> bool {
        matches!((self.lo, self.hi), (Some(l), Some(h)) if l >= h)
    }
}

/// Collected clues for one event.
#[derive(Clone, Debug, Default)]
pub struct Versions {
    wording: Option<Range>,
    class: Option<Range>,
}

impl Versions {
    /// A clue from the message text itself.
    pub fn wording(&mut self, lo: Option<u32>, hi: Option<u32>) {
        let r = Range::new(lo, hi);
        self.wording = Some(match self.wording {
            Some(w) => w.intersect(r),
            None => r,
        });
    }
    /// A clue from the exception class printed before the message.
    pub fn class(&mut self, lo: Option<u32>, hi: Option<u32>) {
        let r = Range::new(lo, hi);
        self.class = Some(match self.class {
            Some(c) => c.intersect(r),
            None => r,
        });
    }
    /// `">=2.5,<2.10"`, `">=2.11"`, `"<1.4"`, or `None` without clues (or contradictory wording).
    pub fn render(&self) -> Option<String> {
        let r = match (self.wording, self.class) {
            (Some(w), Some(c)) => {
                let both = w.intersect(c);
                if both.is_empty() {
                    w
                } else {
                    both
                }
            }
            (w, c) => w.or(c)?,
        };
        if r.is_empty() {
            return None;
        }
        let f = |x: u32| format!("{}.{}", x / 100, x % 100);
        match (r.lo, r.hi) {
            (Some(l), Some(h)) => Some(format!(">={},<{}", f(l), f(h))),
            (Some(l), None) => Some(format!(">={}", f(l))),
            (None, Some(h)) => Some(format!("<{}", f(h))),
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intersects_and_drops_contradicting_class() {
        let mut x = Versions::default();
        x.wording(Some(v(2, 2)), None);
        x.wording(None, Some(v(2, 10)));
        x.class(Some(v(2, 4)), None);
        assert_eq!(x.render().as_deref(), Some(">=2.4,<2.10"));
        let mut y = Versions::default();
        y.wording(Some(v(2, 11)), None);
        y.class(Some(v(1, 13)), Some(v(2, 4)));
        assert_eq!(y.render().as_deref(), Some(">=2.11"));
        let mut z = Versions::default();
        z.wording(None, Some(v(1, 4)));
        assert_eq!(z.render().as_deref(), Some("<1.4"));
        assert_eq!(Versions::default().render(), None);
    }
}
