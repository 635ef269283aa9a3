//! `--plot out.svg`: lateness of every delivered timer over the run, and the
//! delivered rate beside the offered rate. SVG only: plotters writes labels
//! as `<text>` elements, so no fonts are needed to draw it.

use std::path::Path;

use plotters::prelude::*;

use super::report::Arrival;

/// Points drawn at most; larger runs are sampled evenly.
const MAX_POINTS: usize = 10_000;
/// Width of one bar of the delivered-rate line.
const RATE_BUCKET_MS: u64 = 100;

pub fn write_svg(
    path: &Path,
    title: &str,
    due_ms: &[u64],
    arrivals: &[Arrival],
) -> anyhow::Result<()> {
    let Some(&t0_ms) = due_ms.iter().min() else {
        anyhow::bail!("nothing to plot: the run had no timers");
    };
    let t0_us = t0_ms * 1000;
    // (seconds since the first due time, lateness ms) for each first arrival.
    let mut seen = vec![false; due_ms.len()];
    let mut points: Vec<(f64, f64)> = Vec::new();
    for a in arrivals {
        let Some(i) = a.index.map(|i| i as usize).filter(|&i| i < due_ms.len()) else {
            continue;
        };
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        let lateness_ms = (a.at_us as f64 - (due_ms[i] * 1000) as f64) / 1000.0;
        points.push((a.at_us.saturating_sub(t0_us) as f64 / 1e6, lateness_ms));
    }
    let arrivals_s: Vec<f64> = points.iter().map(|p| p.0).collect();
    let due_s: Vec<f64> = due_ms
        .iter()
        .map(|&d| (d - t0_ms) as f64 / 1000.0)
        .collect();
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    let sampled: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();

    let end_s = arrivals_s
        .iter()
        .chain(&due_s)
        .fold(0.0f64, |m, &t| m.max(t))
        + 0.1;
    let max_late = sampled.iter().fold(1.0f64, |m, p| m.max(p.1)) * 1.05;
    let delivered = per_second(&arrivals_s, end_s);
    let offered = per_second(&due_s, end_s);
    let max_rate = delivered
        .iter()
        .chain(&offered)
        .fold(1.0f64, |m, p| m.max(p.1))
        * 1.1;

    let root = SVGBackend::new(path, (1100, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);

    let mut lateness = ChartBuilder::on(&top)
        .caption(format!("{title}: lateness per timer"), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end_s, 0f64..max_late)?;
    lateness
        .configure_mesh()
        .x_desc("seconds since the first due time (arrival)")
        .y_desc("lateness, ms")
        .draw()?;
    lateness.draw_series(
        sampled
            .iter()
            .map(|&(x, y)| Circle::new((x, y), 1, BLUE.mix(0.4).filled())),
    )?;

    let mut rate = ChartBuilder::on(&bottom)
        .caption("timers per second", ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..end_s, 0f64..max_rate)?;
    rate.configure_mesh()
        .x_desc("seconds since the first due time")
        .y_desc("per second")
        .draw()?;
    rate.draw_series(LineSeries::new(offered, &BLACK))?
        .label("due (offered)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    rate.draw_series(LineSeries::new(delivered, &RED))?
        .label("delivered")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    rate.configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Events per second in buckets of [`RATE_BUCKET_MS`], as (bucket start s, rate).
fn per_second(times_s: &[f64], end_s: f64) -> Vec<(f64, f64)> {
    let bucket_s = RATE_BUCKET_MS as f64 / 1000.0;
    let buckets = (end_s / bucket_s).ceil() as usize + 1;
    let mut counts = vec![0u64; buckets];
    for &t in times_s {
        let b = ((t / bucket_s) as usize).min(buckets - 1);
        counts[b] += 1;
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(b, c)| (b as f64 * bucket_s, c as f64 / bucket_s))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_second_scales_bucket_counts() {
        let rates = per_second(&[0.01, 0.02, 0.15], 0.2);
        assert_eq!(rates[0], (0.0, 20.0));
        assert_eq!(rates[1], (0.1, 10.0));
    }

    #[test]
    fn writes_an_svg_with_text_labels() {
        let dir = std::env::temp_dir().join(format!("chime-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.svg");
        let due = [1_000, 1_001, 1_002];
        let arrivals: Vec<Arrival> = (0..3)
            .map(|i| Arrival {
                index: Some(i),
                at_us: (1_005 + i as u64) * 1000,
                attempt: 1,
            })
            .collect();
        write_svg(&path, "test", &due, &arrivals).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(100)]);
        assert!(svg.contains("<text") && svg.contains("lateness, ms"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
