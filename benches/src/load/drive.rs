//! One load run after its target is up: warm-up, creation, then watching
//! the callbacks arrive, with the CPU of every process involved.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use chime_wire::time::now_ms;
use chime_wire::Topics;

use super::args::{BenchArgs, Workload};
use super::create;
use super::report::{self, Cpu, Creation, Report};
use super::{Chime, Outcome};
use crate::harness::cpu;
use crate::harness::receiver::{Expected, Receiver};

pub(super) async fn drive(
    args: &BenchArgs,
    bootstrap: &str,
    run_id: &str,
    workload: Workload,
    receiver: &Receiver,
    chime: &Chime,
) -> anyhow::Result<Outcome> {
    warm_up(chime, receiver, args.api_key.as_deref()).await?;

    let mut processes = chime.processes.clone();
    processes.extend(args.pids.iter().map(|&pid| (cpu::process_name(pid), pid)));
    processes.push(("chime bench (client + receiver)".into(), std::process::id()));
    let cpu_at_start = cpu_snapshot(&processes)?;

    let lead_ms = args
        .lead_ms
        .unwrap_or_else(|| 2000 + workload.count * 1000 / args.via.assumed_rate_per_s());
    let created_from_ms = now_ms();
    let first_due_ms = created_from_ms + lead_ms;
    let plan = create::Plan {
        run_id: run_id.to_string(),
        due_ms: workload
            .offsets_ms
            .iter()
            .map(|o| first_due_ms + o)
            .collect(),
        callback_url: receiver.url("/t"),
    };
    receiver.expect(Arc::new(Expected {
        run_id: plan.run_id.clone(),
        due_ms: plan.due_ms.clone(),
    }));

    let bar = ProgressBar::new(workload.count);
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:40}] {pos}/{len} {msg}")
            .expect("static progress template")
            .progress_chars("=> "),
    );
    bar.set_message(format!("created via {}", args.via.name()));
    bar.enable_steady_tick(Duration::from_millis(200));

    // Create, with the bar following the acknowledgements.
    let created = AtomicU64::new(0);
    let topics = Topics::new(&chime.prefix);
    let target = create::Target {
        api: &chime.api,
        bootstrap,
        timers_topic: &topics.timers,
        concurrency: args.concurrency,
        batch_size: args.batch_size,
        api_key: args.api_key.as_deref(),
    };
    let creating = Instant::now();
    {
        let creation = create::create_all(args.via, &plan, &target, &created);
        tokio::pin!(creation);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                result = &mut creation => { result?; break; }
                _ = tick.tick() => bar.set_position(created.load(Ordering::Relaxed)),
            }
        }
    }
    let creation_s = creating.elapsed().as_secs_f64();
    let created_at_ms = now_ms();
    let creation = Creation {
        via: args.via.name().to_string(),
        timers: workload.count,
        seconds: creation_s,
        rate_per_s: workload.count as f64 / creation_s.max(1e-6),
        done_before_first_due_ms: first_due_ms as i64 - created_at_ms as i64,
    };
    if creation.done_before_first_due_ms < 0 {
        bar.println(format!(
            "warning: creating took {:.1} s, past the first due time; give --lead-ms more than {}",
            creation_s,
            (creation_s * 1000.0) as u64 + 1000
        ));
    }

    // Deliver: from the first due time until every timer arrived or the deadline.
    let cpu_at_created = cpu_snapshot(&processes)?;
    let last_due_ms = plan.due_ms.iter().copied().max().unwrap_or(first_due_ms);
    let deadline_ms = last_due_ms + (args.grace * 1000.0) as u64;
    bar.reset();
    bar.set_length(workload.count);
    let mut cpu_at_first_due = None;
    let delivered_all = loop {
        let (delivered, p99, max) = receiver.progress();
        bar.set_position(delivered);
        let now = now_ms();
        if now < first_due_ms {
            bar.set_message(format!(
                "delivered; first due in {:.1} s",
                (first_due_ms - now) as f64 / 1000.0
            ));
        } else {
            if cpu_at_first_due.is_none() {
                cpu_at_first_due = Some((Instant::now(), cpu_snapshot(&processes)?));
            }
            bar.set_message(format!(
                "delivered; lateness p99 {p99:.1} ms, max {max:.1} ms"
            ));
        }
        if delivered >= workload.count {
            break true;
        }
        if now >= deadline_ms {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delivery_end = Instant::now();
    let cpu_at_end = cpu_snapshot(&processes)?;
    // Late duplicates have a moment to show up before the books close.
    tokio::time::sleep(Duration::from_millis(500)).await;
    bar.finish_and_clear();

    let arrivals = receiver.arrivals();
    let delivery = report::account(&plan.due_ms, &arrivals);
    let (delivery_from, cpu_at_delivery) =
        cpu_at_first_due.unwrap_or((delivery_end, cpu_at_end.clone()));
    let delivery_wall_s = delivery_end
        .saturating_duration_since(delivery_from)
        .as_secs_f64();
    let cpu = processes
        .iter()
        .enumerate()
        .map(|(i, (label, pid))| {
            let delivery_cpu_s = cpu_at_end[i] - cpu_at_delivery[i];
            Cpu {
                label: label.clone(),
                pid: *pid,
                creation_cpu_s: cpu_at_created[i] - cpu_at_start[i],
                delivery_cpu_s,
                delivery_cores: delivery_cpu_s / delivery_wall_s.max(1e-3),
            }
        })
        .collect();

    let report = Report {
        mode: if args.burst.is_some() {
            "burst"
        } else {
            "rate"
        }
        .to_string(),
        timers: workload.count,
        offered_rate_per_s: workload.offered_rate,
        duration_s: workload.duration_s,
        target: format!(
            "{} (topics {}.*, {} partitions)",
            chime.api, chime.prefix, chime.partitions
        ),
        creation,
        delivery,
        timed_out: !delivered_all,
        cpu,
        baselines: Vec::new(),
    };
    Ok(Outcome {
        report,
        record_bytes: plan.command(0).encode().len(),
        due_ms: plan.due_ms,
        arrivals,
    })
}

fn cpu_snapshot(processes: &[(String, u32)]) -> anyhow::Result<Vec<f64>> {
    processes
        .iter()
        .map(|(label, pid)| cpu::cpu_seconds(*pid).with_context(|| format!("CPU of {label}")))
        .collect()
}

/// One timer due now on every partition, each awaited: afterwards every
/// engine owns its partitions and every partition is live, so the run does
/// not measure start-up.
async fn warm_up(chime: &Chime, receiver: &Receiver, api_key: Option<&str>) -> anyhow::Result<()> {
    let http = create::rest_client(api_key, 1)?;
    let before = receiver.probes();
    let mut probes = 0u64;
    for p in 0..chime.partitions {
        let id = (0..)
            .map(|i| format!("probe-{}-{i}", uuid::Uuid::new_v4().simple()))
            .find(|id| {
                chime_wire::partition::partition_for_key(id.as_bytes(), chime.partitions) == p
            })
            .context("no probe id for a partition")?;
        let url = format!("{}/v1/timers", chime.api);
        let response = http
            .post(&url)
            .json(&serde_json::json!({"id": id, "delay_ms": 0, "callback": {"url": receiver.url("/probe")}}))
            .send()
            .await
            .with_context(|| format!("POST {url}: is chime running? (or use --spawn)"))?;
        let status = response.status();
        anyhow::ensure!(
            status.as_u16() == 201,
            "POST {url} answered {status}: {}",
            response.text().await.unwrap_or_default()
        );
        probes += 1;
    }
    let within = Duration::from_secs(60);
    let deadline = Instant::now() + within;
    while receiver.probes() - before < probes {
        anyhow::ensure!(
            Instant::now() < deadline,
            "warm-up: {} of {probes} probe timers called back within {within:?}; \
             is the dispatcher allowed to call loopback (CHIME_CALLBACK_ALLOW=127.0.0.0/8)?",
            receiver.probes() - before
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
