//! Self-contained HTML page for a snapshot analysis: one file, no network (inline CSS, JS and SVG),
//! with a stacked memory-over-time chart, the top allocation sites and a segment map.
//!
//! The charts are drawn by a small inline script from the analysis data embedded as JSON. When it
//! has run, `<body data-ready="1">`; any script error sets `data-jserror` and shows a `#jserror`
//! box (what `tests/html/check.sh` looks for in headless Chromium).
use serde::Serialize;

use crate::catalogue;
use crate::report::markdown::esc;
use crate::report::units::bytes;
use crate::report::{fill, Lang};

use super::analysis::Category;
use super::report::{answer, category_name, kind_name, short};
use super::Analysis;
use super::BlockState;

catalogue! { enum H {
    Title => ("oomdoc · memory snapshot · {}", "oomdoc · 显存快照 · {}"),
    Heading => ("Memory snapshot: {}", "显存快照：{}"),
    Timeline => ("Memory over time (allocated, by category; dashed: reserved)", "显存随时间变化（已分配，按类别；虚线：预留）"),
    Sites => ("Top allocation sites ({})", "分配最多的代码位置（{}）"),
    LibSites => ("Inside libraries ({}): the innermost library line under your own line", "库代码内部（{}）：你的代码行之下最内层的库代码行"),
    SegMap => ("Segment map (address order; each row is an equal slice of the reserved memory)", "段映射（按地址排列；每行是预留显存的等份）"),
    Free => ("free (inactive)", "空闲（未使用）"),
    Pending => ("awaiting a stream", "等待流释放"),
    Totals => ("Totals", "总量"),
    Reserved => ("reserved", "预留"),
    Allocated => ("allocated", "已分配"),
    Active => ("active", "活跃"),
    Requested => ("requested", "请求"),
    LargestFree => ("largest free block", "最大空闲块"),
    InactiveSplit => ("inactive split", "已拆分的空闲块"),
    AtOom => ("at the OOM", "在 OOM 时"),
    AtPeak => ("at the peak", "在峰值时"),
    AtSnapshot => ("in the snapshot", "快照中"),
    Seconds => ("s", "秒"),
    Event => ("event #", "事件 #"),
    AxisTime => ("time", "时间"),
    AxisEvents => ("events", "事件"),
    NoTrace => ("No trace history: the snapshot was taken without _record_memory_history.", "没有分配记录：快照未开启 _record_memory_history。"),
    Moment => ("OOM", "OOM"),
    Peak => ("peak", "峰值"),
}}

/// Colours per category (`Category::ALL` order): Tableau 10 palette.
const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#edc948", "#bab0ac",
];

#[derive(Serialize)]
struct Data<'a> {
    unit: &'a str,
    /// [t, allocated, reserved, c0..c5, trace index]
    points: Vec<Vec<i64>>,
    categories: Vec<(String, &'static str)>,
    /// (t, trace index, label)
    marker: Option<(i64, i64, String)>,
    sites: Vec<SiteData>,
    /// Segments: [address-ordered], each [total, [[offset, size, state, category]]]
    segments: Vec<(u64, Vec<[i64; 4]>)>,
    words: Words,
}

#[derive(Serialize)]
struct SiteData {
    label: String,
    bytes: u64,
    shown: String,
    category: usize,
    kind: String,
    /// Source text and qualified name, when found.
    code: String,
}

#[derive(Serialize)]
struct Words {
    seconds: &'static str,
    event: &'static str,
    axis_time: &'static str,
    axis_events: &'static str,
    free: &'static str,
    pending: &'static str,
    reserved: &'static str,
    allocated: &'static str,
    no_trace: &'static str,
}

fn cat_index(c: Category) -> usize {
    Category::ALL.iter().position(|&x| x == c).unwrap_or(5)
}

/// Renders the page.
pub fn page(a: &Analysis, file: &str, lang: Lang) -> String {
    let moment = match a.moment.kind {
        super::analysis::MomentKind::Oom => H::AtOom,
        super::analysis::MomentKind::Peak => H::AtPeak,
        super::analysis::MomentKind::Snapshot => H::AtSnapshot,
    }
    .text(lang);
    let t0 = a.timeline.start_time_us;
    let marker = match (a.moment.kind, a.moment.trace_index) {
        (super::analysis::MomentKind::Snapshot, _) | (_, None) => None,
        (kind, Some(i)) => {
            let t = if a.timeline.unit == "us" {
                a.moment.time_us.zip(t0).map(|(t, t0)| t - t0).unwrap_or(0)
            } else {
                i as i64
            };
            let label = if kind == super::analysis::MomentKind::Oom {
                H::Moment.text(lang)
            } else {
                H::Peak.text(lang)
            };
            Some((t, i as i64, label.to_string()))
        }
    };
    let data = Data {
        unit: &a.timeline.unit,
        points: a
            .timeline
            .points
            .iter()
            .map(|p| {
                let mut v = vec![p.t, p.allocated as i64, p.reserved as i64];
                v.extend(p.by_category.iter().map(|&x| x as i64));
                v.push(p.index as i64);
                v
            })
            .collect(),
        categories: Category::ALL
            .iter()
            .enumerate()
            .map(|(i, &c)| (category_name(c, lang).to_string(), COLORS[i]))
            .collect(),
        marker,
        sites: a
            .top_sites
            .iter()
            .map(|s| SiteData {
                label: format!("{}:{} {}", short(&s.file), s.line, s.function),
                bytes: s.bytes,
                shown: format!("{} ({:.1}%)", bytes(s.bytes), s.share * 100.0),
                category: cat_index(s.category),
                kind: s
                    .kind
                    .and_then(|k| kind_name(k, lang))
                    .unwrap_or("")
                    .to_string(),
                code: match (&s.qualname, &s.code) {
                    (Some(q), Some(c)) => format!("{q}: {c}"),
                    _ => String::new(),
                },
            })
            .collect(),
        segments: a
            .segment_map
            .iter()
            .map(|s| {
                let blocks = s
                    .blocks
                    .iter()
                    .map(|b| {
                        let state = match b.state {
                            BlockState::ActiveAllocated => 0,
                            BlockState::ActivePendingFree => 1,
                            BlockState::Inactive => 2,
                        };
                        let cat = b.category.map(|c| cat_index(c) as i64).unwrap_or(-1);
                        [b.offset as i64, b.size as i64, state, cat]
                    })
                    .collect();
                (s.total_size, blocks)
            })
            .collect(),
        words: Words {
            seconds: H::Seconds.text(lang),
            event: H::Event.text(lang),
            axis_time: H::AxisTime.text(lang),
            axis_events: H::AxisEvents.text(lang),
            free: H::Free.text(lang),
            pending: H::Pending.text(lang),
            reserved: H::Reserved.text(lang),
            allocated: H::Allocated.text(lang),
            no_trace: H::NoTrace.text(lang),
        },
    };
    // JSON inside <script>: "</" must not appear literally.
    let json = serde_json::to_string(&data)
        .unwrap_or_else(|_| "{}".into())
        .replace("</", "<\\/")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029");

    let mut h = String::with_capacity(64 * 1024 + json.len());
    let lang_attr = match lang {
        Lang::En => "en",
        Lang::Zh => "zh",
    };
    h.push_str(&format!(
        "<!doctype html>\n<html lang=\"{lang_attr}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head>\n<body data-ready=\"0\">\n",
        esc(&fill(H::Title.text(lang), &[&short(file)]))
    ));
    h.push_str(&format!(
        "<h1>{}</h1>\n<section id=\"answer\">",
        esc(&fill(H::Heading.text(lang), &[&file]))
    ));
    for p in answer(a, lang) {
        h.push_str(&format!("<p>{}</p>", esc(&p)));
    }
    h.push_str("</section>\n");

    // Totals table (static).
    h.push_str(&format!(
        "<h2>{}</h2><table class=\"kv\">",
        esc(H::Totals.text(lang))
    ));
    let f = &a.fragmentation;
    for (k, v) in [
        (H::Reserved, a.reserved_bytes),
        (H::Allocated, a.allocated_bytes),
        (H::Active, a.active_bytes),
        (H::Requested, a.requested_bytes),
        (H::InactiveSplit, f.inactive_split_bytes),
        (H::LargestFree, f.largest_free_block_bytes),
    ] {
        h.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(k.text(lang)),
            esc(&bytes(v))
        ));
    }
    for c in Category::ALL {
        h.push_str(&format!(
            "<tr><th><span class=\"sw\" style=\"background:{}\"></span>{} ({})</th><td>{}</td></tr>",
            COLORS[cat_index(c)],
            esc(category_name(c, lang)),
            esc(moment),
            esc(&bytes(a.categories.get(c)))
        ));
    }
    h.push_str("</table>\n");

    h.push_str(&format!(
        "<h2>{}</h2><div id=\"axis\" class=\"axis\"></div><div id=\"timeline\" class=\"chart\"></div><div id=\"legend\" class=\"legend\"></div><div id=\"tip\" class=\"tip\"></div>\n",
        esc(H::Timeline.text(lang))
    ));
    h.push_str(&format!(
        "<h2>{}</h2><div id=\"sites\" class=\"chart\"></div>\n",
        esc(&fill(H::Sites.text(lang), &[&moment]))
    ));
    if !a.library_sites.is_empty() {
        h.push_str(&format!(
            "<h2>{}</h2><table class=\"kv\" id=\"library-sites\">",
            esc(&fill(H::LibSites.text(lang), &[&moment]))
        ));
        for s in &a.library_sites {
            h.push_str(&format!(
                "<tr><th>{}:{} {}</th><td>{}</td><td>&nbsp;{:.1}%</td></tr>",
                esc(short(&s.file)),
                s.line,
                esc(&s.function),
                esc(&bytes(s.bytes)),
                s.share * 100.0
            ));
        }
        h.push_str("</table>\n");
    }
    h.push_str(&format!(
        "<h2>{}</h2><div id=\"segmap\" class=\"chart\"></div>\n",
        esc(H::SegMap.text(lang))
    ));
    h.push_str("<script type=\"application/json\" id=\"data\">");
    h.push_str(&json);
    h.push_str("</script>\n<script>");
    h.push_str(JS);
    h.push_str("</script>\n</body></html>\n");
    h
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1000px;margin:1.5em auto;padding:0 1em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}\
#answer p{line-height:1.45}table.kv{border-collapse:collapse}table.kv th{text-align:left;font-weight:normal;padding:2px 12px 2px 0;color:#444}\
table.kv td{text-align:right;font-variant-numeric:tabular-nums}.sw{display:inline-block;width:10px;height:10px;margin-right:6px;border-radius:2px}\
.chart svg{display:block;max-width:100%;height:auto}.legend span{margin-right:14px;font-size:.85em}.axis button{margin:0 4px 4px 0;font-size:.8em}.axis button.on{font-weight:bold}\
.tip{position:fixed;pointer-events:none;background:#fff;border:1px solid #999;padding:4px 6px;font-size:.8em;display:none;white-space:pre}\
#jserror{background:#fee;border:1px solid #c00;padding:8px;white-space:pre-wrap}text{font-size:11px;fill:#333}";

const JS: &str = r##"
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) e.setAttribute(k, attrs[k]);
    if (parent) parent.appendChild(e);
    return e;
  }
  function fmt(b) {
    var u = ["bytes", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b.toFixed(0) : b.toFixed(2)) + " " + u[i];
  }
  function fail(e) {
    document.body.setAttribute("data-jserror", String(e && e.message || e));
    var p = document.getElementById("jserror") || document.createElement("pre");
    p.id = "jserror";
    p.textContent = "chart error: " + (e && e.stack || e);
    document.body.appendChild(p);
  }
  window.addEventListener("error", function (ev) { fail(ev.error || ev.message); });
  try {
    var D = JSON.parse(document.getElementById("data").textContent);
    var W = D.words, tip = document.getElementById("tip");

    // 1. Stacked memory over time; x axis: trace events (default) or time.
    var NI = 3 + D.categories.length;
    function drawTimeline(mode) {
      var host = document.getElementById("timeline");
      while (host.firstChild) host.removeChild(host.firstChild);
      var useTime = mode === "time" && D.unit === "us";
      var P = D.points.map(function (p) { var q = p.slice(); q[0] = useTime ? p[0] : p[NI]; return q; });
      function tlabel(t) { return useTime ? (t / 1e6).toFixed(3) + " " + W.seconds : W.event + Math.round(t); }
      var w = 960, h = 320, ml = 70, mr = 40, mt = 10, mb = 30;
      var svg = el("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h, id: "timeline-svg", role: "img" }, host);
      if (P.length < 2) {
        var t = el("text", { x: ml, y: 40 }, svg); t.textContent = W.no_trace; return;
      }
      var t0 = P[0][0], t1 = P[P.length - 1][0]; if (t1 === t0) t1 = t0 + 1;
      var ymax = 1; P.forEach(function (p) { ymax = Math.max(ymax, p[1], p[2]); });
      var X = function (t) { return ml + (t - t0) / (t1 - t0) * (w - ml - mr); };
      var Y = function (v) { return mt + (1 - v / ymax) * (h - mt - mb); };
      for (var g = 0; g <= 4; g++) {
        var v = ymax * g / 4, y = Y(v);
        el("line", { x1: ml, x2: w - mr, y1: y, y2: y, stroke: "#eee" }, svg);
        var lt = el("text", { x: ml - 6, y: y + 4, "text-anchor": "end" }, svg); lt.textContent = fmt(v);
      }
      for (var gx = 0; gx <= 5; gx++) {
        var tt = t0 + (t1 - t0) * gx / 5;
        var xt = el("text", { x: X(tt), y: h - 8, "text-anchor": "middle" }, svg); xt.textContent = tlabel(useTime ? tt - t0 : tt);
      }
      var base = P.map(function () { return 0; });
      D.categories.forEach(function (c, ci) {
        var top = P.map(function (p, i) { return base[i] + p[3 + ci]; });
        if (top.every(function (v, i) { return v === base[i]; })) { base = top; return; }
        var d = "M" + X(P[0][0]) + "," + Y(top[0]);
        for (var i = 1; i < P.length; i++) d += "L" + X(P[i][0]) + "," + Y(top[i]);
        for (var j = P.length - 1; j >= 0; j--) d += "L" + X(P[j][0]) + "," + Y(base[j]);
        el("path", { d: d + "Z", fill: c[1], "fill-opacity": 0.85, "class": "area", "data-category": c[0] }, svg);
        base = top;
      });
      var r = "M" + X(P[0][0]) + "," + Y(P[0][2]);
      for (var k = 1; k < P.length; k++) r += "L" + X(P[k][0]) + "," + Y(P[k][2]);
      el("path", { d: r, fill: "none", stroke: "#333", "stroke-dasharray": "4 3", "class": "reserved" }, svg);
      if (D.marker) {
        var mx = X(useTime ? D.marker[0] + t0 : D.marker[1]);
        el("line", { x1: mx, x2: mx, y1: mt, y2: h - mb, stroke: "#c00", "stroke-width": 1.5, "class": "marker" }, svg);
        var mtx = el("text", { x: mx - 4, y: mt + 12, "text-anchor": "end", fill: "#c00" }, svg); mtx.textContent = D.marker[2];
      }
      var cursor = el("line", { x1: 0, x2: 0, y1: mt, y2: h - mb, stroke: "#888", visibility: "hidden" }, svg);
      svg.addEventListener("mousemove", function (ev) {
        var rect = svg.getBoundingClientRect();
        var x = (ev.clientX - rect.left) * w / rect.width;
        var t = t0 + (x - ml) / (w - ml - mr) * (t1 - t0);
        var lo = 0, hi = P.length - 1;
        while (lo < hi) { var mid = (lo + hi) >> 1; if (P[mid][0] < t) lo = mid + 1; else hi = mid; }
        var p = P[lo];
        cursor.setAttribute("x1", X(p[0])); cursor.setAttribute("x2", X(p[0])); cursor.setAttribute("visibility", "visible");
        var s = tlabel(useTime ? p[0] - t0 : p[0]) + "\n" + W.allocated + ": " + fmt(p[1]) + "\n" + W.reserved + ": " + fmt(p[2]);
        D.categories.forEach(function (c, ci) { if (p[3 + ci] > 0) s += "\n" + c[0] + ": " + fmt(p[3 + ci]); });
        tip.textContent = s; tip.style.display = "block";
        tip.style.left = (ev.clientX + 12) + "px"; tip.style.top = (ev.clientY + 12) + "px";
      });
      svg.addEventListener("mouseleave", function () { tip.style.display = "none"; cursor.setAttribute("visibility", "hidden"); });
    }
    drawTimeline("events");
    (function () {
      var ax = document.getElementById("axis");
      if (D.unit !== "us" || D.points.length < 2) return;
      [["events", W.axis_events], ["time", W.axis_time]].forEach(function (m) {
        var b = document.createElement("button");
        b.textContent = m[1]; b.id = "axis-" + m[0]; if (m[0] === "events") b.className = "on";
        b.addEventListener("click", function () {
          ax.querySelectorAll("button").forEach(function (x) { x.className = ""; });
          b.className = "on"; drawTimeline(m[0]);
        });
        ax.appendChild(b);
      });
    })();
    (function () {
      var lg = document.getElementById("legend");
      D.categories.forEach(function (c) {
        var s = document.createElement("span");
        s.innerHTML = '<span class="sw" style="background:' + c[1] + '"></span>';
        s.appendChild(document.createTextNode(c[0]));
        lg.appendChild(s);
      });
    })();

    // 2. Top allocation sites.
    (function () {
      var host = document.getElementById("sites");
      var S = D.sites, w = 960, rowh = 22, lw = 330, h = Math.max(1, S.length) * rowh + 6;
      var svg = el("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h, id: "sites-svg" }, host);
      var max = 1; S.forEach(function (s) { max = Math.max(max, s.bytes); });
      S.forEach(function (s, i) {
        var y = 3 + i * rowh;
        var t = el("text", { x: lw - 8, y: y + 15, "text-anchor": "end" }, svg); t.textContent = s.label;
        var bw = Math.max(1, s.bytes / max * (w - lw - 230));
        var r = el("rect", { x: lw, y: y + 3, width: bw, height: rowh - 6, fill: D.categories[s.category][1], "class": "site-bar" }, svg);
        var ti = el("title", {}, r); ti.textContent = s.label + " " + s.shown + (s.code ? "\n" + s.code : "");
        var v = el("text", { x: lw + bw + 6, y: y + 15 }, svg);
        v.textContent = s.shown + (s.kind ? " · " + s.kind : "");
      });
    })();

    // 3. Segment map: all segments end to end in address order, wrapped into equal rows.
    (function () {
      var host = document.getElementById("segmap");
      var G = D.segments, total = 0;
      G.forEach(function (s) { total += s[0]; });
      var rows = 40, w = 960, rowh = 12, gap = 3, h = rows * (rowh + gap) + 30;
      var svg = el("svg", { viewBox: "0 0 " + w + " " + h, width: w, height: h, id: "segmap-svg" }, host);
      if (total === 0) return;
      var per = total / rows;
      function span(start, len, fill, title, cls) {
        var a = start, end = start + len;
        while (a < end) {
          var row = Math.min(rows - 1, Math.floor(a / per));
          var rowEnd = (row + 1) * per, b = Math.min(end, rowEnd);
          var x = (a - row * per) / per * w, bw = Math.max(0.5, (b - a) / per * w);
          var r = el("rect", { x: x, y: row * (rowh + gap), width: bw, height: rowh, fill: fill, "class": cls }, svg);
          if (title) { var t = el("title", {}, r); t.textContent = title; }
          if (b <= a) break;
          a = b;
        }
      }
      var at = 0;
      G.forEach(function (s, si) {
        s[1].forEach(function (b) {
          var fill = b[2] === 2 ? "#e8e8e8" : b[2] === 1 ? "#999" : (b[3] >= 0 ? D.categories[b[3]][1] : "#bab0ac");
          var name = b[2] === 2 ? W.free : b[2] === 1 ? W.pending : (b[3] >= 0 ? D.categories[b[3]][0] : "");
          span(at + b[0], b[1], fill, "segment " + si + ": " + name + " " + fmt(b[1]), "block");
        });
        span(at, Math.max(1, per / w * 0.6), "#fff", null, "sep");
        at += s[0];
      });
      var note = el("text", { x: 0, y: h - 8 }, svg);
      note.textContent = G.length + " segments, " + fmt(total) + "; " + fmt(per) + " per row; grey: " + W.free;
    })();

    document.body.setAttribute("data-ready", "1");
  } catch (e) { fail(e); }
})();
"##;

#[cfg(test)]
mod tests {
    #[test]
    fn script_has_no_closing_tag() {
        assert!(!super::JS.contains("</script"));
    }
}
