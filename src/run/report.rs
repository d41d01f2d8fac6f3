//! Reports of `run` and `fit` (en + zh), built as `report::Document`s from plain data.
use serde::Serialize;

use super::exec::Outcome;
use super::fit::{FitReport, Stop, TrialResult};
use crate::report::units::{bytes, gib, pct};
use crate::report::{fill, Document, Lang};

/// What `oomdoc run` reports (its JSON form).
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub command: Vec<String>,
    /// The out-of-memory events in the command's output, as `oomdoc diagnose` reads them.
    pub events: Vec<crate::oom::OomEvent>,
    /// The exit code oomdoc returns (the command's, 128+n for a signal, 124 for a timeout).
    pub oomdoc_exit_code: u8,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub snapshot_on_oom: bool,
    /// Memory snapshots the hook wrote.
    pub snapshots: Vec<String>,
    pub log_file: Option<String>,
}

crate::catalogue! {
    pub enum W {
        RunTitle => ("oomdoc run", "oomdoc run 运行监控"),
        Command => ("command", "命令"),
        Ended => ("ended", "结束方式"),
        ExitCode => ("exit code {}", "退出码 {}"),
        Signal => ("killed by signal {0} ({1})", "被信号 {0}（{1}）终止"),
        TimedOut => ("stopped after the --timeout of {} s", "超过 --timeout {} 秒后被终止"),
        Interrupted => ("interrupted: oomdoc received {} and passed it on", "被中断：oomdoc 收到 {} 并转发给了命令"),
        Duration => ("duration", "耗时"),
        Leftover => ("leftover processes ended", "清理的残留进程"),
        OomTitle => ("Out of memory", "显存/内存不足（OOM）"),
        OomLine => ("The command ran out of memory:", "命令发生了内存不足："),
        HostKill => (
            "It was killed by SIGKILL (exit code 137), which on Linux is almost always the kernel's OOM killer: host RAM ran out, not GPU memory. Check `dmesg` and lower DataLoader workers, prefetching or pinned memory.",
            "进程被 SIGKILL 终止（退出码 137），在 Linux 上这几乎总是内核的 OOM killer：耗尽的是主机内存，而不是显存。请查看 `dmesg`，并减少 DataLoader 的 worker 数、预取量或锁页内存。"
        ),
        PeakLine => (
            "Measured peak on GPU {0} ({1}): {2} used by this command, {3} of the card's {4} ({5}).",
            "实测峰值，GPU {0}（{1}）：本命令占用 {2}，整卡已用 {3} / {4}（{5}）。"
        ),
        PeakDevice => (
            "Measured peak on GPU {0} ({1}): {2} of the card's {3} in use ({4}); this command's own share was not visible to NVML.",
            "实测峰值，GPU {0}（{1}）：整卡已用 {2} / {3}（{4}）；NVML 未能给出本命令自身的占用。"
        ),
        Others => (
            "Other processes already held {0} on GPU {1} before the command started.",
            "命令启动前，其他进程已在 GPU {1} 上占用 {0}。"
        ),
        Full => (
            "The command itself filled the card: the batch, the model's activations or the optimizer state do not fit as configured.",
            "是命令本身占满了显存：当前配置下的批量、激活值或优化器状态放不下。"
        ),
        NextSteps => ("Next steps", "下一步"),
        NextDiagnose => ("Full diagnosis of the log: `oomdoc diagnose {}`", "完整诊断日志：`oomdoc diagnose {}`"),
        NextSnapshot => ("What filled the memory, by source line: `oomdoc snapshot {}`", "按源代码行查看显存被什么占满：`oomdoc snapshot {}`"),
        NextSnapshotHook => (
            "Rerun with `oomdoc run --snapshot-on-oom -- ...` to get a memory snapshot of the failure.",
            "使用 `oomdoc run --snapshot-on-oom -- ...` 重新运行，可在失败时得到显存快照。"
        ),
        NextFit => (
            "Find the largest batch that fits by real trials: `oomdoc fit -- <command with {{batch}}>`",
            "通过实际试运行找出能放下的最大批量：`oomdoc fit -- <含 {{batch}} 的命令>`"
        ),
        GpuTitle => ("GPU memory", "显存"),
        GpuCol => ("GPU", "GPU"),
        NameCol => ("name", "名称"),
        PeakOwnCol => ("peak, this command", "峰值（本命令）"),
        PeakDevCol => ("peak, whole card", "峰值（整卡）"),
        BaselineCol => ("before start", "启动前"),
        TotalCol => ("total", "总量"),
        NotSeen => ("not seen", "未观测到"),
        NoGpu => ("GPU memory was not sampled: {}.", "未采样显存：{}。"),
        OutputTail => ("Last lines of output", "输出的最后几行"),

        FitTitle => ("oomdoc fit", "oomdoc fit 批量搜索"),
        Trials => ("Trials", "试运行"),
        NumCol => ("#", "#"),
        BatchCol => ("micro-batch", "微批量"),
        AccumCol => ("accum", "累积步数"),
        EffCol => ("effective", "等效批量"),
        ResultCol => ("result", "结果"),
        TimeCol => ("time", "耗时"),
        PeakCol => ("peak GPU", "显存峰值"),
        Fits => ("completed", "完成"),
        Oom => ("out of memory", "内存不足"),
        Failed => ("failed (exit {})", "失败（退出码 {}）"),
        TrialTimedOut => ("timed out", "超时"),
        TrialInterrupted => ("interrupted", "被中断"),
        ResultTitle => ("Result", "结果"),
        Best => (
            "Largest micro-batch that completed {0} steps: {1} (gradient accumulation {2}, effective batch {3}).",
            "完成 {0} 步的最大微批量：{1}（梯度累积 {2}，等效批量 {3}）。"
        ),
        BestExact => (
            "Use micro-batch {0} with gradient accumulation {1}: it completed {2} steps and keeps the effective batch at {3} exactly.",
            "使用微批量 {0}、梯度累积 {1}：已完成 {2} 步，且等效批量严格保持为 {3}。"
        ),
        Alternative => (
            "Micro-batch {0} also completed, but {0} does not divide {1}: with accumulation {2} the effective batch would be {3}.",
            "微批量 {0} 也能完成，但 {0} 不能整除 {1}：累积 {2} 步时等效批量为 {3}。"
        ),
        LrNote => (
            "The effective batch changes from {0} to {1}: scale the learning rate by {2} (linear rule) or {3} (square-root rule, common with Adam), or keep the warm-up and schedule in samples rather than steps.",
            "等效批量由 {0} 变为 {1}：学习率按 {2} 倍缩放（线性规则），或按 {3} 倍（平方根规则，Adam 类优化器常用）；或将预热与调度按样本数而非步数设置。"
        ),
        Boundary => ("The limit lies between {0} (completed) and {1} (out of memory).", "上限位于 {0}（完成）与 {1}（内存不足）之间。"),
        NothingFits => (
            "Nothing fits: even micro-batch {} ran out of memory. Reduce memory another way (mixed precision, activation checkpointing, a smaller model or sequence) — `oomdoc plan` searches those knobs.",
            "放不下：即使微批量 {} 也内存不足。需要用其他方法降低显存（混合精度、激活检查点、更小的模型或序列长度）——`oomdoc plan` 会搜索这些选项。"
        ),
        NoneCompleted => ("No trial completed, so no size can be recommended.", "没有试运行完成，因此无法推荐批量大小。"),
        StopTrials => ("Stopped at the trial limit (--max-trials {}).", "已达到试运行次数上限（--max-trials {}）。"),
        StopTime => ("Stopped at the time limit.", "已达到时间上限。"),
        StopFailed => (
            "Stopped: the command failed for a reason other than memory (below). Fix it and run fit again.",
            "已停止：命令因内存以外的原因失败（见下）。修复后请重新运行 fit。"
        ),
        StopInterrupted => ("Stopped: interrupted.", "已停止：被中断。"),
        MaxFits => ("The largest size allowed (--max-batch {}) fits.", "允许的最大批量（--max-batch {}）可以放下。"),
        CommandTitle => ("Command to use", "建议使用的命令"),
        StepsNote => ("Replace {steps} with the length of your real run.", "请将 {steps} 替换为实际训练的步数。"),
        NoStepsPlaceholder => (
            "The command has no {steps} placeholder, so each trial ran as long as the script chose; a size counts as completed when its run exited 0 without an out-of-memory message.",
            "命令中没有 {steps} 占位符，因此每次试运行的长度由脚本自己决定；退出码为 0 且没有内存不足信息即视为完成。"
        ),
        NoGpuFit => ("GPU memory was not sampled ({}); trials were judged by exit code and output.", "未采样显存（{}）；试运行结果依据退出码和输出判断。"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGKILL => "SIGKILL",
        libc::SIGHUP => "SIGHUP",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

fn secs(s: f64) -> String {
    format!("{s:.1} s")
}

fn ended(o: &Outcome, timeout: Option<f64>, lang: Lang) -> String {
    if o.timed_out {
        return fill(W::TimedOut.text(lang), &[&timeout.unwrap_or(o.duration_s)]);
    }
    let base = match (o.exit_code, o.signal) {
        (Some(c), _) => fill(W::ExitCode.text(lang), &[&c]),
        (None, Some(s)) => fill(W::Signal.text(lang), &[&s, &signal_name(s)]),
        _ => "?".into(),
    };
    match o.interrupted_by {
        Some(s) => format!(
            "{base}; {}",
            fill(W::Interrupted.text(lang), &[&signal_name(s)])
        ),
        None => base,
    }
}

/// The `run` report. `timeout_s` is the --timeout given, for the wording of a timeout.
pub fn run_doc(r: &RunReport, timeout_s: Option<f64>, lang: Lang) -> Document {
    let o = &r.outcome;
    let mut d = Document::new();
    d.heading(1, W::RunTitle.text(lang));
    let mut kv = vec![
        (
            W::Command.text(lang).to_string(),
            super::fit::shell_join(&r.command),
        ),
        (W::Ended.text(lang).to_string(), ended(o, timeout_s, lang)),
        (W::Duration.text(lang).to_string(), secs(o.duration_s)),
    ];
    if o.leftover_killed > 0 {
        kv.push((
            W::Leftover.text(lang).to_string(),
            o.leftover_killed.to_string(),
        ));
    }
    d.kv(kv);

    if o.is_oom() {
        d.heading(2, W::OomTitle.text(lang));
        if let Some(line) = &o.oom_line {
            d.para(W::OomLine.text(lang));
            d.code("text", line.clone());
        }
        let host_kill = super::detect::exit_suggests_oom(o.exit_code, o.signal)
            && o.oom_line
                .as_deref()
                .map_or(true, |l| !l.contains("out of memory"));
        if host_kill {
            d.para(W::HostKill.text(lang));
        }
        let mut lines = Vec::new();
        for g in &o.gpu.devices {
            if g.peak_device_used_bytes == 0 || g.total_bytes == 0 {
                continue;
            }
            let share = pct(g.peak_device_used_bytes as f64 / g.total_bytes as f64);
            match g.peak_process_bytes {
                Some(p) => lines.push(fill(
                    W::PeakLine.text(lang),
                    &[
                        &g.index,
                        &g.name,
                        &bytes(p),
                        &bytes(g.peak_device_used_bytes),
                        &bytes(g.total_bytes),
                        &share,
                    ],
                )),
                None => lines.push(fill(
                    W::PeakDevice.text(lang),
                    &[
                        &g.index,
                        &g.name,
                        &bytes(g.peak_device_used_bytes),
                        &bytes(g.total_bytes),
                        &share,
                    ],
                )),
            }
            // Another process's share matters when it is over 5% of the card (below that it is
            // the usual CUDA context and display memory of a desktop).
            if g.baseline_used_bytes * 20 > g.total_bytes {
                lines.push(fill(
                    W::Others.text(lang),
                    &[&bytes(g.baseline_used_bytes), &g.index],
                ));
            } else if g.peak_device_used_bytes * 10 >= g.total_bytes * 9 {
                lines.push(W::Full.text(lang).to_string());
            }
        }
        for l in lines {
            d.para(l);
        }
        let mut next = Vec::new();
        if let Some(log) = &r.log_file {
            next.push(fill(W::NextDiagnose.text(lang), &[log]));
        }
        for s in &r.snapshots {
            next.push(fill(W::NextSnapshot.text(lang), &[s]));
        }
        if r.snapshots.is_empty() && !r.snapshot_on_oom && !host_kill {
            next.push(W::NextSnapshotHook.text(lang).to_string());
        }
        next.push(fill(W::NextFit.text(lang), &[]));
        d.heading(3, W::NextSteps.text(lang));
        d.bullets(next);
    }

    for (i, ev) in r.events.iter().enumerate() {
        d.append(crate::oom::report::event_document(ev, i + 1, lang));
    }
    gpu_section(&mut d, o, lang);
    d
}

fn gpu_section(d: &mut Document, o: &Outcome, lang: Lang) {
    if let Some(why) = &o.gpu.unavailable {
        d.para(fill(W::NoGpu.text(lang), &[why]));
        return;
    }
    if o.gpu.devices.is_empty() {
        return;
    }
    d.heading(2, W::GpuTitle.text(lang));
    let rows = o
        .gpu
        .devices
        .iter()
        .map(|g| {
            vec![
                g.index.to_string(),
                g.name.clone(),
                g.peak_process_bytes
                    .map(gib)
                    .unwrap_or_else(|| W::NotSeen.text(lang).to_string()),
                gib(g.peak_device_used_bytes),
                gib(g.baseline_used_bytes),
                gib(g.total_bytes),
            ]
        })
        .collect();
    d.table(
        vec![
            W::GpuCol.text(lang).into(),
            W::NameCol.text(lang).into(),
            W::PeakOwnCol.text(lang).into(),
            W::PeakDevCol.text(lang).into(),
            W::BaselineCol.text(lang).into(),
            W::TotalCol.text(lang).into(),
        ],
        rows,
    );
}

/// One trial's result in words.
pub fn trial_result(r: TrialResult, exit: u8, lang: Lang) -> String {
    match r {
        TrialResult::Fits => W::Fits.text(lang).into(),
        TrialResult::OutOfMemory => W::Oom.text(lang).into(),
        TrialResult::Failed => fill(W::Failed.text(lang), &[&exit]),
        TrialResult::TimedOut => W::TrialTimedOut.text(lang).into(),
        TrialResult::Interrupted => W::TrialInterrupted.text(lang).into(),
    }
}

/// The `fit` report.
pub fn fit_doc(r: &FitReport, lang: Lang) -> Document {
    let mut d = Document::new();
    d.heading(1, W::FitTitle.text(lang));
    d.kv(vec![(
        W::Command.text(lang).to_string(),
        super::fit::shell_join(&r.template),
    )]);
    d.heading(2, W::Trials.text(lang));
    let rows = r
        .trials
        .iter()
        .enumerate()
        .map(|(i, t)| {
            vec![
                (i + 1).to_string(),
                t.batch.to_string(),
                t.accum.to_string(),
                t.batch.saturating_mul(t.accum).to_string(),
                trial_result(t.result, t.exit_code, lang),
                secs(t.duration_s),
                t.peak_gpu_bytes.map(gib).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    d.table(
        vec![
            W::NumCol.text(lang).into(),
            W::BatchCol.text(lang).into(),
            W::AccumCol.text(lang).into(),
            W::EffCol.text(lang).into(),
            W::ResultCol.text(lang).into(),
            W::TimeCol.text(lang).into(),
            W::PeakCol.text(lang).into(),
        ],
        rows,
    );

    d.heading(2, W::ResultTitle.text(lang));
    let steps = r.config.steps;
    match (r.best, r.alternative) {
        (Some(b), Some(a)) => {
            d.para(fill(
                W::BestExact.text(lang),
                &[&b.batch, &b.accum, &steps, &b.effective_batch],
            ));
            let want = r.config.effective_batch.unwrap_or(b.effective_batch);
            d.para(fill(
                W::Alternative.text(lang),
                &[&a.batch, &want, &a.accum, &a.effective_batch],
            ));
        }
        (Some(b), None) => {
            d.para(fill(
                W::Best.text(lang),
                &[&steps, &b.batch, &b.accum, &b.effective_batch],
            ));
        }
        (None, _) => {
            if r.smallest_failing.is_some() && r.stop == Stop::Complete {
                d.para(fill(
                    W::NothingFits.text(lang),
                    &[&r.smallest_failing.unwrap_or(r.config.min_batch)],
                ));
            } else {
                d.para(W::NoneCompleted.text(lang));
            }
        }
    }
    if let Some(n) = r.lr_note {
        d.para(fill(
            W::LrNote.text(lang),
            &[
                &n.wanted_effective_batch,
                &n.effective_batch,
                &format!("{:.3}", n.linear_scale),
                &format!("{:.3}", n.sqrt_scale),
            ],
        ));
    }
    match (r.largest_fitting, r.smallest_failing) {
        (Some(l), Some(h)) if h > l + 1 => {
            d.para(fill(W::Boundary.text(lang), &[&l, &h]));
        }
        (Some(l), None) if l >= r.config.max_batch => {
            d.para(fill(W::MaxFits.text(lang), &[&r.config.max_batch]));
        }
        _ => {}
    }
    match r.stop {
        Stop::Complete => {}
        Stop::TrialLimit => {
            d.para(fill(W::StopTrials.text(lang), &[&r.config.max_trials]));
        }
        Stop::TimeLimit => {
            d.para(W::StopTime.text(lang));
        }
        Stop::CommandFailed => {
            d.para(W::StopFailed.text(lang));
            if let Some(t) = r.trials.iter().rev().find_map(|t| t.output_tail.clone()) {
                d.heading(3, W::OutputTail.text(lang));
                d.code("text", t);
            }
        }
        Stop::Interrupted => {
            d.para(W::StopInterrupted.text(lang));
        }
    }
    if !r.template.iter().any(|a| a.contains(super::fit::STEPS)) {
        d.para(W::NoStepsPlaceholder.text(lang));
    }
    if let Some(why) = &r.gpu_unavailable {
        d.para(fill(W::NoGpuFit.text(lang), &[why]));
    }
    if let Some(cmd) = &r.command {
        d.heading(2, W::CommandTitle.text(lang));
        d.code("sh", cmd.clone());
        if cmd.contains(super::fit::STEPS) {
            d.para(W::StepsNote.text(lang));
        }
    }
    d
}
