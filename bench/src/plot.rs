//! The throughput curve: delivered against offered packets per second, one line per path,
//! drawn as SVG with plotters (SVG backend only: the text is SVG `<text>`, laid out by the
//! viewer, so no font files or fontconfig are needed to draw it).
//!
//! The y = x line is the ideal (everything offered is delivered). The overload region,
//! shaded, starts where the offered rate exceeds the lowest peak delivered rate of a path
//! that saturated: past it, a path that degrades gracefully stays flat, and one that
//! collapses falls.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

/// One path's measured points, as (offered, delivered) packets per second.
#[derive(Clone, Debug)]
pub struct Curve {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Where overload starts: offering more than a path ever delivered overloads it, so the
/// region starts at the lowest peak delivered rate among the paths that saturated (lost more
/// than 5% at their highest offered rate). Using the peak's value rather than where it was
/// measured keeps a flat, noisy plateau from moving the boundary.
fn overload_start(curves: &[Curve]) -> Option<f64> {
    curves
        .iter()
        .filter_map(|c| {
            let top = c.points.iter().max_by(|a, b| a.0.total_cmp(&b.0))?;
            let peak = c.points.iter().map(|p| p.1).fold(0.0, f64::max);
            (top.1 < 0.95 * top.0).then_some(peak)
        })
        .min_by(f64::total_cmp)
}

/// Line colours, distinct from each other and from the overload shade.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(23, 190, 207),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Draws the curves into an SVG document and returns it.
pub fn render_svg(title: &str, curves: &[Curve]) -> Result<String> {
    const MPPS: f64 = 1e6;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (960, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let top = curves
            .iter()
            .flat_map(|c| c.points.iter())
            .map(|&(o, d)| o.max(d) / MPPS)
            .fold(0.1, f64::max)
            * 1.05;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 22))
            .margin(18)
            .x_label_area_size(50)
            .y_label_area_size(64)
            .build_cartesian_2d(0f64..top, 0f64..top)?;
        chart
            .configure_mesh()
            .x_desc("offered (Mpps)")
            .y_desc("delivered (Mpps)")
            .x_label_formatter(&|v| format!("{v:.1}"))
            .y_label_formatter(&|v| format!("{v:.1}"))
            .label_style(("sans-serif", 14))
            .light_line_style(BLACK.mix(0.05))
            .draw()?;

        if let Some(start) = overload_start(curves) {
            let shade = RGBColor(220, 50, 32).mix(0.10);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(start / MPPS, 0.0), (top, top)],
                    shade.filled(),
                )))?
                .label("overload (offered above the lowest saturated peak)")
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 18, y + 6)], shade.filled())
                });
        }
        let ideal = BLACK.mix(0.45);
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, 0.0), (top, top)],
                8,
                5,
                ideal.stroke_width(1),
            ))?
            .label("ideal (delivered = offered)")
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], ideal));

        for (i, c) in curves.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()].to_rgba();
            let mut points: Vec<(f64, f64)> = c
                .points
                .iter()
                .map(|&(o, d)| (o / MPPS, d / MPPS))
                .collect();
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
                .label(c.name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2))
                });
            chart.draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 4, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font(("sans-serif", 14))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .draw()?;
        root.present()?;
    }
    Ok(svg)
}

/// Writes the throughput curve of `curves` to `file` (SVG).
pub fn throughput_curve(file: &Path, title: &str, curves: &[Curve]) -> Result<()> {
    let svg = render_svg(title, curves)?;
    std::fs::write(file, svg).with_context(|| format!("writing {}", file.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curves() -> Vec<Curve> {
        vec![
            Curve {
                name: "dsrgate".into(),
                points: vec![(0.5e6, 0.5e6), (1e6, 1e6), (2e6, 1.6e6), (6e6, 1.5e6)],
            },
            Curve {
                name: "kernel_forward".into(),
                points: vec![(0.5e6, 0.5e6), (1e6, 0.99e6), (2e6, 1.7e6), (5e6, 1.8e6)],
            },
        ]
    }

    #[test]
    fn svg_has_series_axes_and_overload_region() {
        let svg = render_svg("forward: 64-byte UDP", &curves()).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        for text in [
            "dsrgate",
            "kernel_forward",
            "ideal (delivered = offered)",
            "overload (offered above the lowest saturated peak)",
            "offered (Mpps)",
            "delivered (Mpps)",
            "forward: 64-byte UDP",
        ] {
            assert!(svg.contains(text), "missing {text:?}");
        }
        // One marker per point.
        assert_eq!(svg.matches("<circle").count(), 8);
    }

    #[test]
    fn overload_starts_at_the_lowest_saturated_peak() {
        // dsrgate delivers at most 1.6 Mpps, the kernel 1.8 Mpps; both lose at the top.
        assert_eq!(overload_start(&curves()), Some(1.6e6));
        let unsaturated = [Curve {
            name: "x".into(),
            points: vec![(1.0, 1.0), (2.0, 2.0)],
        }];
        assert_eq!(overload_start(&unsaturated), None);
        let svg = render_svg("t", &unsaturated).unwrap();
        assert!(!svg.contains("overload"));
    }

    #[test]
    fn writes_the_file() {
        let path = std::env::temp_dir().join(format!("dsrgate-plot-{}.svg", std::process::id()));
        throughput_curve(&path, "t", &curves()).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(svg.contains("kernel_forward"));
    }
}
