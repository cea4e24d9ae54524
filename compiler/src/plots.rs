//! SVG plots for `qc analyze --plots DIR`: per-layer SQNR bars, and activation histograms with the
//! clipping range each calibration method picks. Plain SVG text, readable in any browser.

use crate::analyze::{Analysis, Histogram};
use std::fmt::Write;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Bars of isolated and cumulative SQNR per layer (in the analysis's rank order).
pub fn sqnr_bars(a: &Analysis) -> String {
    let (row, left, width) = (22.0, 260.0, 420.0);
    let height = 60.0 + row * a.layers.len() as f64;
    let finite = |v: f64| if v.is_finite() { v } else { 100.0 };
    let top = a
        .layers
        .iter()
        .flat_map(|l| [l.isolated.map_or(0.0, |m| finite(m.sqnr_db)), finite(l.cumulative.sqnr_db)])
        .fold(1.0f64, f64::max);
    let x = |db: f64| left + width * (finite(db).max(0.0) / top);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n",
        left + width + 80.0
    );
    writeln!(s, "<text x=\"10\" y=\"18\" font-size=\"13\">SQNR per layer, dB (blue: isolated, orange: cumulative)</text>")
        .unwrap();
    for (i, l) in a.layers.iter().enumerate() {
        let y = 36.0 + row * i as f64;
        writeln!(s, "<text x=\"10\" y=\"{}\">{}. {}</text>", y + 12.0, i + 1, escape(&l.name)).unwrap();
        if let Some(m) = l.isolated {
            writeln!(s, "<rect x=\"{left}\" y=\"{y}\" width=\"{:.1}\" height=\"8\" fill=\"#4878d0\"/>", x(m.sqnr_db) - left)
                .unwrap();
        }
        writeln!(
            s,
            "<rect x=\"{left}\" y=\"{}\" width=\"{:.1}\" height=\"8\" fill=\"#ee854a\"/>",
            y + 9.0,
            x(l.cumulative.sqnr_db) - left
        )
        .unwrap();
        writeln!(s, "<text x=\"{:.1}\" y=\"{}\">{:.1}</text>", x(l.cumulative.sqnr_db) + 4.0, y + 16.0, l.cumulative.sqnr_db)
            .unwrap();
    }
    s.push_str("</svg>\n");
    s
}

/// The histogram of |x| (log counts, 128 columns) with each method's clipping threshold.
pub fn histogram(h: &Histogram) -> String {
    let (w, ht, left, bottom) = (640.0, 260.0, 50.0, 220.0);
    let columns = 128;
    let per = (h.bins.len() / columns).max(1);
    let counts: Vec<u64> = h.bins.chunks(per).map(|c| c.iter().sum()).collect();
    let peak = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let cw = (w - left - 20.0) / counts.len().max(1) as f64;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{ht}\" font-family=\"sans-serif\" font-size=\"11\">\n"
    );
    writeln!(
        s,
        "<text x=\"10\" y=\"16\" font-size=\"13\">{}: |x| over [0, {:.4}], {} exact zeros</text>",
        escape(&h.value),
        h.range,
        h.zeros
    )
    .unwrap();
    for (i, &c) in counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let bh = (bottom - 30.0) * (c as f64).ln_1p() / peak.ln_1p();
        writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#999\"/>",
            left + cw * i as f64,
            bottom - bh,
            cw
        )
        .unwrap();
    }
    let colors = ["#d62728", "#2ca02c", "#1f77b4", "#9467bd", "#ff7f0e"];
    for (k, (m, lo, hi)) in h.ranges.iter().enumerate() {
        let t = lo.abs().max(hi.abs()) as f64;
        let x = left + (w - left - 20.0) * (t / (h.range as f64).max(f64::MIN_POSITIVE)).min(1.0);
        let c = colors[k % colors.len()];
        writeln!(s, "<line x1=\"{x:.1}\" y1=\"30\" x2=\"{x:.1}\" y2=\"{bottom}\" stroke=\"{c}\" stroke-width=\"1.5\"/>").unwrap();
        writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" fill=\"{c}\">{m} [{lo:.3}, {hi:.3}]</text>",
            left + 120.0 * k as f64,
            bottom + 22.0
        )
        .unwrap();
    }
    s.push_str("</svg>\n");
    s
}
