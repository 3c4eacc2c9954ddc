//! Helpers shared by the tests of the `sitemon` binary: the command with a clean
//! environment, producing with kcat, reading `/metrics`.
//!
//! Each test binary uses its own subset, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sitemon_core::config::KafkaSettings;
use sitemon_testkit::events::event_json;
use sitemon_testkit::{TestDb, services};

/// `sitemon` with none of the test's environment but `PATH`: every setting is the test's.
pub(crate) fn bare_sitemon() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sitemon"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

/// `sitemon` with only `DATABASE_URL` (which need not be valid).
pub(crate) fn sitemon_with_database(database_url: &str) -> Command {
    let mut command = bare_sitemon();
    command.env("DATABASE_URL", database_url);
    command
}

/// `sitemon` with only the test's settings: the database, the plaintext brokers, the topic.
pub(crate) fn sitemon(db: &TestDb, topic: &str) -> Command {
    let mut command = sitemon_with_database(&db.url);
    command
        .env("KAFKA_BROKERS", &services().kafka_brokers)
        .env("KAFKA_TOPIC", topic);
    command
}

/// `sitemon` with only these Kafka settings, as the `KAFKA_*` variables a user sets.
pub(crate) fn sitemon_kafka(settings: &KafkaSettings) -> Command {
    let mut command = bare_sitemon();
    command
        .env("KAFKA_BROKERS", &settings.brokers)
        .env("KAFKA_TOPIC", &settings.topic);
    let files = [
        ("KAFKA_CA_FILE", &settings.ca_file),
        ("KAFKA_CERT_FILE", &settings.cert_file),
        ("KAFKA_KEY_FILE", &settings.key_file),
    ];
    for (var, file) in files {
        if let Some(file) = file {
            command.env(var, file);
        }
    }
    if let Some(mechanism) = &settings.sasl_mechanism {
        command.env("KAFKA_SASL_MECHANISM", mechanism);
    }
    if let Some(username) = &settings.sasl_username {
        command.env("KAFKA_SASL_USERNAME", username);
    }
    if let Some(password) = &settings.sasl_password {
        command.env("KAFKA_SASL_PASSWORD", password.expose());
    }
    command
}

/// The longest a one-shot command (`add-site`, `status`, a `sync` that cannot start...) may
/// take before the test fails instead of hanging.
pub(crate) const RUN_PATIENCE: Duration = Duration::from_secs(120);

/// Runs `command` to its end, its output captured and no stdin, as [`Command::output`] does,
/// for at most [`RUN_PATIENCE`].
///
/// # Panics
/// When it does not start, or is still running after [`RUN_PATIENCE`] (it is killed then).
pub(crate) fn run(command: &mut Command) -> Output {
    let what = format!("{:?}", command.get_args().collect::<Vec<_>>());
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs the sitemon binary");
    output_with_timeout(child, RUN_PATIENCE, &format!("sitemon {what}"))
}

/// Waits at most `within` for `child` to exit; `what` names it in the failure.
///
/// # Panics
/// When it is still running after `within` (it is killed first, so that it does not outlive
/// the test).
pub(crate) fn wait_with_timeout(child: &mut Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("the child's status") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`Child::wait_with_output`] for at most `within`: the exit status and all the child wrote
/// to its piped stdout and stderr. `what` names it in the failure.
///
/// # Panics
/// When it is still running after `within` (it is killed first).
pub(crate) fn output_with_timeout(child: Child, within: Duration, what: &str) -> Output {
    let pid = child.id().to_string();
    let (done, output) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match output.recv_timeout(within) {
        Ok(output) => output.expect("the child's output"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid]).status();
            panic!("{what} did not exit within {within:?}");
        }
    }
}

/// What the command wrote to stdout.
pub(crate) fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// What the command wrote to stderr.
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Sends SIGTERM, as a service manager does.
pub(crate) fn terminate(child: &Child) {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -TERM {}", child.id());
}

/// The body of `GET /metrics` from `addr`, or `None` while nothing answers there yet.
pub(crate) fn scrape(addr: SocketAddr) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: sitemon\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The value of the series written exactly as `series` (name and labels).
pub(crate) fn series_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The value of the first series whose line starts with `prefix` (a name, or a name and the
/// opening brace of its labels).
pub(crate) fn first_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| line.starts_with(prefix))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The sum of the series whose lines start with `prefix`.
pub(crate) fn sum_values(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#') && line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A pseudo-random number from the clock, for kill moments.
pub(crate) fn random() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_nanos();
    (nanos as u64).wrapping_mul(6364136223846793005) >> 20
}

/// Rounds of `key\tvalue` lines for [`kcat_produce`]: events of the sites in turn, and in
/// one round of ten a first message that can only be a reject. It counts what it made.
#[derive(Debug)]
pub(crate) struct Messages {
    sites: Vec<i32>,
    per_round: u64,
    round: u64,
    /// Events made so far.
    pub(crate) events: u64,
    /// Messages made so far that can only be rejects.
    pub(crate) poison: u64,
}

impl Messages {
    /// Rounds of `per_round` messages for `sites`.
    pub(crate) fn new(sites: Vec<i32>, per_round: u64) -> Self {
        Self {
            sites,
            per_round,
            round: 0,
            events: 0,
            poison: 0,
        }
    }

    /// The next round: each line (ending in `\n`) with the site it is keyed by.
    pub(crate) fn next_round(&mut self) -> Vec<(i32, Vec<u8>)> {
        let round = self.round;
        self.round += 1;
        (0..self.per_round)
            .map(|n| {
                let site = self.sites[n as usize % self.sites.len()];
                let value = if round % 10 == 5 && n == 0 {
                    self.poison += 1;
                    b"not an event".to_vec()
                } else {
                    self.events += 1;
                    event_json(site, round * self.per_round + n)
                };
                let mut line = format!("{site}\t").into_bytes();
                line.extend_from_slice(&value);
                line.push(b'\n');
                (site, line)
            })
            .collect()
    }
}

/// A count from `sql`, whose one parameter is the topic.
pub(crate) async fn count(db: &TestDb, sql: &str, topic: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(topic)
        .fetch_one(&db.pool)
        .await
        .expect("count")
}

/// Produces `key\tvalue` lines with kcat (to `partition`, or by kcat's partitioner), and
/// waits for the broker's acknowledgement.
pub(crate) fn kcat_produce(topic: &str, partition: Option<i32>, lines: &[u8]) {
    let mut command = Command::new("kcat");
    command
        .args(["-P", "-b", &services().kafka_brokers, "-t", topic])
        .args(["-K", "\t", "-X", "acks=all"]);
    if let Some(partition) = partition {
        command.args(["-p", &partition.to_string()]);
    }
    let mut kcat = command
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kcat runs (scripts/services up installs it)");
    kcat.stdin
        .take()
        .expect("stdin")
        .write_all(lines)
        .expect("kcat reads");
    let output = output_with_timeout(kcat, Duration::from_secs(60), "kcat -P");
    assert!(
        output.status.success(),
        "kcat failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}
