//! The whole pipeline's benchmark: `sitemon check` → the broker → `sitemon sync` →
//! PostgreSQL, against a loopback HTTP server, with the CPU of every process per 1,000
//! checks. Run it through `scripts/bench-pipeline`, which runs it once per setting, rate and
//! repetition.
//!
//! Arguments: `LABEL SITES INTERVAL_SECONDS WARMUP_SECONDS WINDOW_SECONDS`. Environment as
//! `scripts/services env` prints, plus:
//! - `SITEMON_BIN`: the `sitemon` binary of this setting (a release build);
//! - `CHECK_ARGS`, `SYNC_ARGS`: extra flags of `sitemon check` and `sitemon sync`, split on
//!   spaces;
//! - `KAFKA_PID`, `KAFKA_DATA`: the shared broker's process and its `log.dirs`;
//! - `IDLE_SECONDS` (default 20): the broker's CPU is first measured that long with none of
//!   this run's processes started, the other agents' load on the shared broker.
//!
//! What is measured, over the window (after the warm-up):
//! - CPU: utime+stime deltas from `/proc/PID/stat` of the checker, the sync, the broker's
//!   JVM, and every PostgreSQL backend connected to this run's database (sampled every
//!   second, so that a backend that starts in the window counts from zero) except the
//!   latency probe's own;
//! - produce requests: the record batches appended to the topic's log files in the window,
//!   counted by walking the batch headers (the checker sends one batch per partition per
//!   request, so the count is the same for every version of the checker);
//! - bytes on the broker's disk per 1,000 events: the topic's `.log` files after the checker
//!   flushed and stopped, over the events it produced;
//! - end-to-end latency, check start → row committed: a probe polls every
//!   [`PROBE_EVERY`] for rows past the offsets it has seen (`now() - timestamp_utc` of each
//!   new row, `now()` being the start of the polling statement, whose snapshot holds every
//!   row committed before it). `timestamp_utc` is when the check started, on the same
//!   machine's clock; a row is seen at most one poll (plus one query) after its commit, so
//!   the figures are upper bounds, late by half a poll period on average.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const PROBE_EVERY: Duration = Duration::from_millis(25);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [label, sites, interval, warmup, window] = &args[..] else {
        anyhow::bail!("usage: bench_pipeline LABEL SITES INTERVAL_S WARMUP_S WINDOW_S");
    };
    let (sites, interval): (u64, u64) = (sites.parse()?, interval.parse()?);
    let warmup = Duration::from_secs(warmup.parse()?);
    let window = Duration::from_secs(window.parse()?);
    let bin = std::env::var("SITEMON_BIN")?;
    let split = |name: &str| -> Vec<String> {
        std::env::var(name)
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let (check_args, sync_args) = (split("CHECK_ARGS"), split("SYNC_ARGS"));
    let kafka_pid: u32 = std::env::var("KAFKA_PID")?.trim().parse()?;
    let kafka_data = PathBuf::from(std::env::var("KAFKA_DATA")?);
    let idle: u64 = std::env::var("IDLE_SECONDS").map_or(Ok(20), |s| s.parse())?;

    // The broker's load from everyone else, just before this run.
    let idle_start = cpu_seconds(kafka_pid)?;
    tokio::time::sleep(Duration::from_secs(idle)).await;
    let broker_idle_per_s = (cpu_seconds(kafka_pid)? - idle_start) / idle as f64;

    let served = Arc::new(AtomicU64::new(0));
    let addr = serve(Arc::clone(&served)).await?;
    let name = sitemon_testkit::unique_name("sitemon_benchpipe");
    let admin = sitemon_testkit::admin_pool().await;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await?;
    let url = sitemon_testkit::url_with_database(&sitemon_testkit::services().database_url, &name);
    let pool = sitemon_core::db::connect(&sitemon_core::DatabaseConfig::from_url(&url)?, 2).await?;
    sitemon_core::db::migrate(&pool).await?;
    sqlx::query(
        "INSERT INTO websites (url, check_interval)
         SELECT 'http://' || $1 || '/site/' || i, $2 FROM generate_series(1, $3) AS i",
    )
    .bind(addr.to_string())
    .bind(i32::try_from(interval)?)
    .bind(i32::try_from(sites)?)
    .execute(&pool)
    .await?;
    let topic = sitemon_testkit::random_topic();

    let mut run = Run {
        children: Vec::new(),
        logs: Vec::new(),
    };
    let result = measure(
        &mut run,
        Setup {
            bin: &bin,
            url: &url,
            topic: &topic,
            check_args: &check_args,
            sync_args: &sync_args,
            kafka_pid,
            kafka_data: &kafka_data,
            warmup,
            window,
            served: &served,
            pool: &pool,
        },
    )
    .await;
    run.stop_all();
    pool.close().await;
    let client = sitemon_core::kafka::connect(&sitemon_testkit::kafka_config(&topic)).await?;
    let _ = sitemon_core::kafka::delete_topic(&client, &topic).await;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    let figures = result?;
    for log in &run.logs {
        let _ = std::fs::remove_file(log);
    }

    let asked = sites as f64 / interval as f64;
    let per_1000 = |cpu: f64| cpu / figures.checks as f64 * 1000.0;
    let seconds = figures.elapsed;
    let broker_net = figures.broker_cpu - broker_idle_per_s * seconds;
    let whole = figures.checker_cpu + broker_net + figures.sync_cpu + figures.postgres_cpu;
    println!(
        "| {label} | {asked:.0} | {:.0} | {:.3} | {:.3} | {:.3} | **{:.3}** | {:.3} | {:.3} | {:.3} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.0}% |",
        figures.checks as f64 / seconds,
        per_1000(figures.checker_cpu),
        per_1000(figures.broker_cpu),
        per_1000(broker_idle_per_s * seconds),
        per_1000(broker_net),
        per_1000(figures.sync_cpu),
        per_1000(figures.postgres_cpu),
        per_1000(whole),
        figures.produce_requests as f64 / seconds,
        figures.checks as f64 / figures.produce_requests.max(1) as f64,
        figures.disk_bytes as f64 / figures.produced.max(1) as f64 * 1000.0 / 1024.0,
        figures.latency_p50_ms,
        figures.latency_p99_ms,
        figures.checker_rss_mb,
        figures.sync_rss_mb,
        figures.latency_samples,
        figures.load_average,
        figures.machine_busy * 100.0,
    );
    eprintln!(
        "{label}: {} checks in {seconds:.1} s, broker {:.1} MB RSS, produced {}, e2e max {:.0} ms",
        figures.checks, figures.broker_rss_mb, figures.produced, figures.latency_max_ms
    );
    Ok(())
}

struct Setup<'a> {
    bin: &'a str,
    url: &'a str,
    topic: &'a str,
    check_args: &'a [String],
    sync_args: &'a [String],
    kafka_pid: u32,
    kafka_data: &'a Path,
    warmup: Duration,
    window: Duration,
    served: &'a AtomicU64,
    pool: &'a PgPool,
}

#[derive(Debug, Default)]
struct Figures {
    elapsed: f64,
    checks: u64,
    checker_cpu: f64,
    broker_cpu: f64,
    sync_cpu: f64,
    postgres_cpu: f64,
    produce_requests: u64,
    produced: u64,
    disk_bytes: u64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_max_ms: f64,
    latency_samples: usize,
    checker_rss_mb: f64,
    sync_rss_mb: f64,
    broker_rss_mb: f64,
    load_average: f64,
    machine_busy: f64,
}

/// The processes of one run, stopped (SIGTERM, then SIGKILL) whatever happens.
struct Run {
    children: Vec<Child>,
    logs: Vec<PathBuf>,
}

impl Run {
    fn start(
        &mut self,
        bin: &str,
        args: &[&str],
        extra: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(u32, PathBuf)> {
        let log = std::env::temp_dir().join(format!(
            "{}-{}.log",
            args[0],
            sitemon_testkit::unique_name("benchpipe")
        ));
        let mut command = Command::new(bin);
        command
            .args(args)
            .args(extra)
            .env("RUST_LOG", "info,rskafka=error,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command.spawn()?;
        let pid = child.id();
        self.children.push(child);
        self.logs.push(log.clone());
        Ok((pid, log))
    }

    /// SIGTERM to one child, and its exit (killed after 40 s).
    fn stop(&mut self, pid: u32) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
        let Some(child) = self.children.iter_mut().find(|c| c.id() == pid) else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(40);
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                child.kill()?;
                anyhow::bail!("process {pid} did not stop within 40 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn stop_all(&mut self) {
        for pid in self.children.iter().map(Child::id).collect::<Vec<_>>() {
            let _ = self.stop(pid);
        }
    }
}

async fn wait_for_line(log: &Path, line: &str, child_pid: u32) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains(line) {
            return Ok(());
        }
        anyhow::ensure!(
            Path::new(&format!("/proc/{child_pid}")).exists(),
            "process {child_pid} exited before {line:?}: {text}"
        );
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "no {line:?} within 60 s: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn measure(run: &mut Run, setup: Setup<'_>) -> anyhow::Result<Figures> {
    let env = [("DATABASE_URL", setup.url), ("KAFKA_TOPIC", setup.topic)];
    let (checker, checker_log) = run.start(
        setup.bin,
        &["check", "--progress-interval", "60"],
        setup.check_args,
        &env,
    )?;
    wait_for_line(&checker_log, "checker started", checker).await?;
    let (sync, sync_log) = run.start(setup.bin, &["sync"], setup.sync_args, &env)?;
    wait_for_line(&sync_log, "reading partition", sync).await?;
    tokio::time::sleep(setup.warmup).await;

    // The window.
    let stop_probe = tokio_util::sync::CancellationToken::new();
    let probe = tokio::spawn(probe(
        setup.pool.clone(),
        setup.topic.to_owned(),
        stop_probe.clone(),
    ));
    let busy_start = machine_ticks()?;
    let served_start = setup.served.load(Ordering::Relaxed);
    let batches_start = count_batches(setup.kafka_data, setup.topic)?;
    let cpu_start = [checker, setup.kafka_pid, sync].map(|pid| cpu_seconds(pid).unwrap_or(0.0));
    let start = Instant::now();
    tokio::time::sleep(setup.window).await;
    anyhow::ensure!(
        Path::new(&format!("/proc/{}", setup.kafka_pid)).exists(),
        "the broker (pid {}) stopped during the window (another agent restarted it?): run again",
        setup.kafka_pid
    );
    let cpu_end = [checker, setup.kafka_pid, sync].map(|pid| cpu_seconds(pid).unwrap_or(0.0));
    let elapsed = start.elapsed().as_secs_f64();
    let served_end = setup.served.load(Ordering::Relaxed);
    let batches_end = count_batches(setup.kafka_data, setup.topic)?;
    let busy_end = machine_ticks()?;
    stop_probe.cancel();
    let (mut latencies, postgres_cpu) = probe.await??;
    let checker_rss_mb = peak_rss_kb(checker, "VmHWM")? as f64 / 1024.0;
    let sync_rss_mb = peak_rss_kb(sync, "VmHWM")? as f64 / 1024.0;
    let broker_rss_mb = peak_rss_kb(setup.kafka_pid, "VmRSS")? as f64 / 1024.0;
    let load_average: f64 = std::fs::read_to_string("/proc/loadavg")?
        .split_whitespace()
        .next()
        .unwrap_or("0")
        .parse()?;

    run.stop(checker)?;
    let checker_text = std::fs::read_to_string(&checker_log)?;
    let produced = checker_text
        .lines()
        .find(|l| l.contains("checker stopped:"))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|kv| kv.strip_prefix("produced="))
                .and_then(|v| v.parse().ok())
        })
        .ok_or_else(|| anyhow::anyhow!("no final summary: {checker_text}"))?;
    let disk_bytes = log_bytes(setup.kafka_data, setup.topic)?;
    run.stop(sync)?;

    latencies.sort_by(f64::total_cmp);
    anyhow::ensure!(!latencies.is_empty(), "the probe saw no row committed");
    let quantile = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    Ok(Figures {
        elapsed,
        checks: served_end - served_start,
        checker_cpu: cpu_end[0] - cpu_start[0],
        broker_cpu: cpu_end[1] - cpu_start[1],
        sync_cpu: cpu_end[2] - cpu_start[2],
        postgres_cpu,
        produce_requests: batches_end.saturating_sub(batches_start),
        produced,
        disk_bytes,
        latency_p50_ms: quantile(0.50),
        latency_p99_ms: quantile(0.99),
        latency_max_ms: quantile(1.0),
        latency_samples: latencies.len(),
        checker_rss_mb,
        sync_rss_mb,
        broker_rss_mb,
        load_average,
        machine_busy: busy_end.busy_since(&busy_start),
    })
}

/// Polls for newly committed rows until stopped; returns each row's latency (ms) and the CPU
/// seconds the run's other PostgreSQL backends spent meanwhile.
async fn probe(
    pool: PgPool,
    topic: String,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let mut connection = pool.acquire().await?;
    let own: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *connection)
        .await?;
    let mut last: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT kafka_partition_id, coalesce(max(kafka_offset_id), -1) FROM website_status
         WHERE kafka_topic = $1 AND kafka_topic_incarnation = 0 GROUP BY 1",
    )
    .bind(&topic)
    .fetch_all(&mut *connection)
    .await?;
    let mut known: HashMap<i32, i64> = last.drain(..).collect();
    for partition in 0..64 {
        known.entry(partition).or_insert(-1);
    }
    // pid → (CPU when first seen, CPU last seen)
    let mut backends: HashMap<i32, (f64, f64)> = HashMap::new();
    let mut first_sample = true;
    let mut last_sample = Instant::now() - Duration::from_secs(10);
    let mut latencies = Vec::new();
    let mut ticker = tokio::time::interval(PROBE_EVERY);
    loop {
        let stopping = stop.is_cancelled();
        if stopping || last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            let pids: Vec<i32> = sqlx::query_scalar(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> $1",
            )
            .bind(own)
            .fetch_all(&mut *connection)
            .await?;
            for pid in pids {
                let Ok(cpu) = cpu_seconds(pid as u32) else {
                    continue;
                };
                let start = if first_sample { cpu } else { 0.0 };
                backends.entry(pid).or_insert((start, cpu)).1 = cpu;
            }
            first_sample = false;
        }
        if stopping {
            break;
        }
        let (partitions, offsets): (Vec<i32>, Vec<i64>) =
            known.iter().map(|(p, o)| (*p, *o)).unzip();
        let rows: Vec<(i32, i64, f64)> = sqlx::query_as(
            "SELECT s.kafka_partition_id, s.kafka_offset_id,
                    (extract(epoch FROM now() - s.timestamp_utc) * 1000)::float8
             FROM unnest($1::int4[], $2::int8[]) AS l(p, o)
             JOIN website_status s
               ON s.kafka_topic = $3 AND s.kafka_topic_incarnation = 0
              AND s.kafka_partition_id = l.p AND s.kafka_offset_id > l.o",
        )
        .bind(&partitions)
        .bind(&offsets)
        .bind(&topic)
        .fetch_all(&mut *connection)
        .await?;
        for (partition, offset, latency) in rows {
            latencies.push(latency);
            let seen = known.entry(partition).or_insert(-1);
            *seen = (*seen).max(offset);
        }
        tokio::select! {
            _ = ticker.tick() => {}
            () = stop.cancelled() => {}
        }
    }
    let cpu = backends.values().map(|(first, last)| last - first).sum();
    Ok((latencies, cpu))
}

/// The record batches in the topic's log files: a batch's header is its base offset (8
/// bytes) and its length (4 bytes), followed by that many bytes.
fn count_batches(data: &Path, topic: &str) -> anyhow::Result<u64> {
    let mut batches = 0;
    for file in topic_logs(data, topic)? {
        let bytes = std::fs::read(&file)?;
        let mut at = 0;
        while at + 12 <= bytes.len() {
            let length = i32::from_be_bytes(bytes[at + 8..at + 12].try_into()?);
            let next = at + 12 + usize::try_from(length)?;
            if length <= 0 || next > bytes.len() {
                break;
            }
            batches += 1;
            at = next;
        }
    }
    Ok(batches)
}

fn log_bytes(data: &Path, topic: &str) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for file in topic_logs(data, topic)? {
        bytes += std::fs::metadata(file)?.len();
    }
    Ok(bytes)
}

/// The `.log` segment files of the topic's partitions.
fn topic_logs(data: &Path, topic: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for dir in std::fs::read_dir(data)? {
        let dir = dir?.path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_ours = name
            .strip_prefix(topic)
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|p| p.parse::<u32>().is_ok());
        if !is_ours {
            continue;
        }
        for file in std::fs::read_dir(&dir)? {
            let file = file?.path();
            if file.extension().is_some_and(|e| e == "log") {
                files.push(file);
            }
        }
    }
    Ok(files)
}

/// A minimal HTTP server: answers every request with 200 and closes, counting requests.
async fn serve(served: Arc<AtomicU64>) -> anyhow::Result<std::net::SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                continue;
            };
            let served = Arc::clone(&served);
            tokio::spawn(async move {
                let mut buf = [0_u8; 2048];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
                if stream.write_all(reply).await.is_ok() {
                    served.fetch_add(1, Ordering::Relaxed);
                }
                let _ = stream.shutdown().await;
            });
        }
    });
    Ok(addr)
}

/// User plus system CPU time of a process, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state: utime is the
    // 12th of them, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / clock_ticks())
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A line of /proc/PID/status in KiB (`VmHWM`, `VmRSS`).
fn peak_rss_kb(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .ok_or_else(|| anyhow::anyhow!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// The machine's CPU ticks from /proc/stat: busy and total.
struct Ticks {
    busy: u64,
    total: u64,
}

impl Ticks {
    fn busy_since(&self, start: &Ticks) -> f64 {
        (self.busy - start.busy) as f64 / (self.total - start.total).max(1) as f64
    }
}

fn machine_ticks() -> anyhow::Result<Ticks> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let total: u64 = values.iter().sum();
    // idle and iowait
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Ok(Ticks {
        busy: total - idle,
        total,
    })
}
