//! An SVG chart of an evaluation: accuracy (with its 95% interval) against
//! tokens per item, one point per team.

use std::fmt::Write as _;

use super::Score;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The chart, as a standalone SVG document.
pub fn svg(scores: &[Score], title: &str) -> String {
    let (w, h, left, bottom, top, right) = (640.0, 420.0, 60.0, 50.0, 40.0, 20.0);
    let max_tokens = scores
        .iter()
        .map(|s| s.tokens_per_item)
        .fold(1.0f64, f64::max)
        * 1.15;
    let x = |t: f64| left + t / max_tokens * (w - left - right);
    let y = |a: f64| top + (1.0 - a) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\
         <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{}</text>",
        w / 2.0,
        esc(title)
    );
    // Axes and grid.
    for k in 0..=4 {
        let a = k as f64 / 4.0;
        let _ = write!(
            s,
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.0}%</text>",
            w - right,
            left - 6.0,
            y(a) + 4.0,
            a * 100.0,
            y = y(a)
        );
    }
    let _ = write!(
        s,
        "<line x1=\"{left}\" x2=\"{}\" y1=\"{b}\" y2=\"{b}\" stroke=\"black\"/><line x1=\"{left}\" x2=\"{left}\" y1=\"{top}\" y2=\"{b}\" stroke=\"black\"/>\
         <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">tokens per item</text><text x=\"{left}\" y=\"{}\" text-anchor=\"middle\">0</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{:.0}</text>\
         <text transform=\"translate(14,{}) rotate(-90)\" text-anchor=\"middle\">accuracy</text>",
        w - right,
        (left + w - right) / 2.0,
        h - 12.0,
        h - bottom + 16.0,
        w - right,
        h - bottom + 16.0,
        max_tokens,
        (top + h - bottom) / 2.0,
        b = h - bottom
    );
    for (i, sc) in scores.iter().enumerate() {
        let hue = (i * 97) % 360;
        let (px, py) = (x(sc.tokens_per_item), y(sc.accuracy));
        let _ = write!(
            s,
            "<line x1=\"{px:.1}\" x2=\"{px:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"hsl({hue},60%,40%)\"/>\
             <circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"5\" fill=\"hsl({hue},60%,50%)\"><title>{}: {:.1}% [{:.1}, {:.1}], {:.0} tokens/item</title></circle>\
             <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
            y(sc.ci_high),
            y(sc.ci_low),
            esc(&sc.team),
            sc.accuracy * 100.0,
            sc.ci_low * 100.0,
            sc.ci_high * 100.0,
            sc.tokens_per_item,
            px + 8.0,
            py - 8.0,
            esc(&sc.team)
        );
    }
    s.push_str("</svg>\n");
    s
}
