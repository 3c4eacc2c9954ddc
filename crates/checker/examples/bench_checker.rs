//! The checker's benchmark: N sites on a loopback HTTP server, `sitemon check` against the
//! real broker for a fixed time, and in the same run the ceiling (a plain loop of
//! fresh-connection GETs against the same server). Run it through `scripts/bench-checker`.
//!
//! Arguments: `SITES INTERVAL_SECONDS RUN_SECONDS`; environment as `scripts/services env`
//! prints, plus `SITEMON_BIN` (a release build of `sitemon`).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CEILING_SECONDS: u64 = 10;
const CEILING_WORKERS: usize = 64;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let [sites, interval, seconds] = args[..] else {
        anyhow::bail!("usage: bench_checker SITES INTERVAL_SECONDS RUN_SECONDS");
    };
    let bin = std::env::var("SITEMON_BIN")?;

    let served = Arc::new(AtomicU64::new(0));
    let addr = serve(Arc::clone(&served)).await?;

    // The ceiling: as many fresh-connection GETs as the machine does against this server.
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(CEILING_SECONDS);
    let workers: Vec<_> = (0..CEILING_WORKERS)
        .map(|_| {
            let done = Arc::clone(&done);
            tokio::spawn(async move {
                while Instant::now() < until {
                    if get(addr).await.is_ok() {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await?;
    }
    let ceiling = done.load(Ordering::Relaxed) as f64 / CEILING_SECONDS as f64;

    // The sites, in a database of their own.
    let name = sitemon_testkit::unique_name("sitemon_bench");
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
    pool.close().await;

    let topic = sitemon_testkit::random_topic();
    let log_path = std::env::temp_dir().join(format!("{name}.log"));
    let mut child = Command::new(&bin)
        .args(["check", "--progress-interval", "1"])
        .env("DATABASE_URL", &url)
        .env("KAFKA_TOPIC", &topic)
        .env("RUST_LOG", "info,rskafka=error,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path)?)
        .spawn()?;
    let pid = child.id();
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let started_waiting = Instant::now();
    while !log().contains("checker started") {
        anyhow::ensure!(
            started_waiting.elapsed() < Duration::from_secs(60),
            "no start: {}",
            log()
        );
        anyhow::ensure!(
            child.try_wait()?.is_none(),
            "sitemon check exited: {}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let served_at_start = served.load(Ordering::Relaxed);
    let cpu_at_start = cpu_seconds(pid)?;
    let start = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_at_start;
    let rss_mb = peak_rss_kb(pid)? as f64 / 1024.0;
    let served_in_window = served.load(Ordering::Relaxed) - served_at_start;
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = child.wait()?;
    let text = log();
    let summary = text
        .lines()
        .find(|l| l.contains("checker stopped:"))
        .ok_or_else(|| anyhow::anyhow!("no summary (exit {status}): {text}"))?;
    let field = |key: &str| -> f64 {
        summary
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    };

    let asked = sites as f64 / interval as f64;
    let achieved = served_in_window as f64 / elapsed;
    println!(
        "| {sites} | {interval} s | {asked:.0} | {achieved:.0} | {ceiling:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {rss_mb:.0} | {:.0} | {:.0} | {:.0} |",
        achieved / ceiling,
        field("lag_p50_ms"),
        field("lag_p99_ms"),
        cpu / (achieved * elapsed) * 1000.0,
        field("produced"),
        field("dropped"),
        field("skipped_ticks"),
    );
    eprintln!("summary: {summary}");
    anyhow::ensure!(status.success(), "sitemon check exited with {status}");

    let client = sitemon_core::kafka::connect(&sitemon_testkit::kafka_config(&topic)).await?;
    sitemon_core::kafka::delete_topic(&client, &topic).await?;
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&admin)
        .await?;
    let _ = std::fs::remove_file(&log_path);
    Ok(())
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

/// One GET over a fresh connection, read to the end.
async fn get(addr: std::net::SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .await?;
    let mut sink = Vec::with_capacity(128);
    stream.read_to_end(&mut sink).await?;
    Ok(())
}

/// User plus system CPU time of a process, from /proc.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state: utime is the
    // 12th of them, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    let per_second: f64 =
        String::from_utf8(Command::new("getconf").arg("CLK_TCK").output()?.stdout)?
            .trim()
            .parse()?;
    Ok(ticks / per_second)
}

/// The peak resident set of a process, from /proc (VmHWM).
fn peak_rss_kb(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}
