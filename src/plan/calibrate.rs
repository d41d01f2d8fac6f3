//! Fitting the step-time coefficients on a measurement file (`oomdoc validate --speed`), and
//! the coefficients in use, fitted on the H100 calibration rows.
use std::path::Path;

use clap::Parser;
use serde::Serialize;

use super::model_eval::step_cost;
use super::throughput::{fit, Coefficients, FitRow};
use crate::error::{Error, Result};
use crate::memory::validate::RowArgs;

/// Fitted by `oomdoc validate --speed tests/fixtures/calibration/measurements-h100-torch2.11.jsonl`
/// (see docs/accuracy.md); `fitted_coefficients_are_current` refits and compares.
pub const FITTED: Coefficients = Coefficients {
    tensor_core: 1.4460276206440257,
    cuda_core: 1.029280385007864,
    memory: 1.00000000768714,
    launch: 4.603116156041211e-5,
    optimizer: 0.6180888655626829,
};

/// Measured vs predicted step time of one row.
#[derive(Clone, Debug, Serialize)]
pub struct SpeedRow {
    pub line: usize,
    pub workload: String,
    pub estimate_args: String,
    pub measured_step_s: f64,
    pub predicted_step_s: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SpeedFit {
    pub gpu: String,
    pub coefficients: Coefficients,
    pub rows: Vec<SpeedRow>,
}

/// Reads the rows of a measurement file that have a step time, computes their features on the
/// file's GPU (`gpu`, catalogue name) and fits the coefficients.
pub fn fit_file(path: &Path, gpu: &str) -> Result<SpeedFit> {
    fit_file_with(path, gpu, None)
}

/// `fit_file`, with the rows' predictions made by `predict_with` instead of the refit when given.
pub fn fit_file_with(
    path: &Path,
    gpu: &str,
    predict_with: Option<Coefficients>,
) -> Result<SpeedFit> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let spec = crate::gpu::lookup(gpu)?;
    let mut meta = Vec::new();
    let mut workloads: std::collections::HashMap<String, crate::model::Workload> =
        Default::default();
    for (i, line) in text.lines().enumerate() {
        let ln = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
            Error::input(format!("{}:{ln}: not a JSON object: {e}", path.display()))
        })?;
        let (Some(args), Some(t)) = (
            v.get("estimate_args").and_then(|a| a.as_str()),
            v.get("step_time_s").and_then(|t| t.as_f64()),
        ) else {
            continue;
        };
        if v.get("error").is_some() || v.get("capped").is_some() {
            continue;
        }
        let ra = RowArgs::try_parse_from(args.split_whitespace()).map_err(|e| {
            Error::input(format!(
                "{}:{ln}: estimate_args: {}",
                path.display(),
                e.to_string().lines().next().unwrap_or("")
            ))
        })?;
        let key = format!(
            "{}|{:?}|{:?}",
            ra.model, ra.knobs.seq_len, ra.knobs.image_size
        );
        if !workloads.contains_key(&key) {
            let w = crate::model::resolve(&ra.model, base, &ra.knobs)?;
            workloads.insert(key.clone(), w);
        }
        let w = &workloads[&key];
        let k = w.resolve_knobs(&ra.knobs)?;
        let cost = step_cost(w, &k);
        meta.push((ln, w.name.clone(), args.to_string(), t, k, cost));
    }
    let fit_rows: Vec<FitRow> = meta
        .iter()
        .map(|(_, _, _, t, k, cost)| FitRow {
            cost,
            knobs: k,
            measured_s: *t,
        })
        .collect();
    let c = fit(&fit_rows, spec);
    let p = predict_with.unwrap_or(c);
    let rows = meta
        .iter()
        .map(|(line, workload, estimate_args, t, k, cost)| SpeedRow {
            line: *line,
            workload: workload.clone(),
            estimate_args: estimate_args.clone(),
            measured_step_s: *t,
            predicted_step_s: p.step_time(cost, k, spec),
        })
        .collect();
    Ok(SpeedFit {
        gpu: spec.name.to_string(),
        coefficients: c,
        rows,
    })
}

/// The step-time model with the coefficients in use (`FITTED`) against every row with a step
/// time, and the refit for comparison.
#[derive(Clone, Debug, Serialize)]
pub struct SpeedValidation {
    pub gpu: String,
    pub coefficients: Coefficients,
    pub refit: Coefficients,
    pub rows: Vec<SpeedRow>,
    /// |predicted / measured - 1| over all rows.
    pub median_abs_error: f64,
    pub max_abs_error: f64,
    /// Per workload: (name, rows, median |error|, max |error|).
    pub by_workload: Vec<(String, usize, f64, f64)>,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn speed_validation(path: &Path, gpu: &str) -> Result<SpeedValidation> {
    // Predictions with the coefficients in use, not the refit.
    let f = fit_file_with(path, gpu, Some(FITTED))?;
    let rel_err = |r: &SpeedRow| (r.predicted_step_s / r.measured_step_s - 1.0).abs();
    let errs: Vec<f64> = f.rows.iter().map(rel_err).collect();
    let mut names: Vec<String> = Vec::new();
    for r in &f.rows {
        if !names.contains(&r.workload) {
            names.push(r.workload.clone());
        }
    }
    let by_workload = names
        .into_iter()
        .map(|n| {
            let e: Vec<f64> = f
                .rows
                .iter()
                .filter(|r| r.workload == n)
                .map(rel_err)
                .collect();
            let max = e.iter().cloned().fold(0.0, f64::max);
            (n, e.len(), median(e), max)
        })
        .collect();
    Ok(SpeedValidation {
        gpu: f.gpu.clone(),
        coefficients: FITTED,
        refit: f.coefficients,
        median_abs_error: median(errs.clone()),
        max_abs_error: errs.iter().cloned().fold(0.0, f64::max),
        rows: f.rows,
        by_workload,
    })
}

/// The speed validation as a report (English and Chinese headings).
pub fn document(v: &SpeedValidation, lang: crate::report::Lang) -> crate::report::Document {
    use crate::report::Lang;
    let zh = lang == Lang::Zh;
    let mut d = crate::report::Document::new();
    d.heading(
        1,
        if zh {
            "步骤时间模型：预测与实测"
        } else {
            "Step-time model: predicted vs measured"
        },
    );
    d.para(format!(
        "GPU: {} · median |error| {:.1}% · max {:.1}% · {} rows",
        v.gpu,
        v.median_abs_error * 100.0,
        v.max_abs_error * 100.0,
        v.rows.len()
    ));
    let c = &v.coefficients;
    d.para(format!(
        "coefficients: tensor core {:.3}, CUDA core {:.3}, memory {:.3}, launch {:.2} µs/op, optimizer {:.3}",
        c.tensor_core,
        c.cuda_core,
        c.memory,
        c.launch * 1e6,
        c.optimizer
    ));
    d.table(
        vec![
            "workload".into(),
            "rows".into(),
            "median |error|".into(),
            "max |error|".into(),
        ],
        v.by_workload
            .iter()
            .map(|(n, k, m, x)| {
                vec![
                    n.clone(),
                    k.to_string(),
                    format!("{:.1}%", m * 100.0),
                    format!("{:.1}%", x * 100.0),
                ]
            })
            .collect(),
    );
    d.table(
        vec![
            "line".into(),
            "configuration".into(),
            "measured s/step".into(),
            "predicted".into(),
            "error".into(),
        ],
        v.rows
            .iter()
            .map(|r| {
                vec![
                    r.line.to_string(),
                    r.estimate_args
                        .replace("--model ", "")
                        .replace(" --grad-accum 1", ""),
                    format!("{:.3}", r.measured_step_s),
                    format!("{:.3}", r.predicted_step_s),
                    format!(
                        "{:+.0}%",
                        (r.predicted_step_s / r.measured_step_s - 1.0) * 100.0
                    ),
                ]
            })
            .collect(),
    );
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/calibration/measurements-h100-torch2.11.jsonl")
    }

    #[test]
    fn fitted_coefficients_are_current() {
        let f = fit_file(&calibration(), "h100").unwrap();
        eprintln!("{:?}", f.coefficients);
        for r in &f.rows {
            eprintln!(
                "{:>4} {:<18} measured {:.3} predicted {:.3} ({:+.0}%)  {}",
                r.line,
                r.workload,
                r.measured_step_s,
                r.predicted_step_s,
                (r.predicted_step_s / r.measured_step_s - 1.0) * 100.0,
                r.estimate_args
            );
        }
        let a = [
            f.coefficients.tensor_core,
            f.coefficients.cuda_core,
            f.coefficients.memory,
            f.coefficients.launch,
            f.coefficients.optimizer,
        ];
        let b = [
            FITTED.tensor_core,
            FITTED.cuda_core,
            FITTED.memory,
            FITTED.launch,
            FITTED.optimizer,
        ];
        for j in 0..5 {
            assert!(
                (a[j] - b[j]).abs() <= 1e-3 * a[j].abs().max(1e-9),
                "coefficient {j}: fitted {} vs constant {}",
                a[j],
                b[j]
            );
        }
    }
}
