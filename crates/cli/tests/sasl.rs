//! The `sitemon` binary over SASL/SCRAM on TLS: the settings come from the `KAFKA_SASL_*`
//! environment variables, as a user gives them.

mod support;

use std::process::Command;

use sitemon_core::config::Secret;
use sitemon_testkit::{random_topic, sasl_kafka_settings};
use support::{run, sitemon_kafka, stderr};

/// A `sitemon` command with only the Kafka settings of the SASL_SSL listener, as
/// `SCRAM-SHA-256` user (what `scripts/services env --sasl` exports), with `password`.
fn sitemon_sasl(topic: &str, password: &str) -> Command {
    let mut settings = sasl_kafka_settings(topic, "SCRAM-SHA-256");
    settings.sasl_password = Some(Secret::new(password));
    sitemon_kafka(&settings)
}

#[test]
fn topic_create_and_delete_over_sasl_scram() {
    let topic = random_topic();
    let password = sitemon_testkit::SASL_PASSWORD;

    let output = run(sitemon_sasl(&topic, password).args(["topic", "create", "--partitions", "2"]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("created topic {topic}")),
        "{}",
        stderr(&output)
    );

    let output = run(sitemon_sasl(&topic, password).args(["topic", "delete"]));
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(&format!("deleted topic {topic}")),
        "{}",
        stderr(&output)
    );
}

/// A wrong password is refused at once, not retried until the connect deadline: one line
/// that says the login was refused and which settings to check, exit status 1, never the
/// password.
#[test]
fn wrong_sasl_password_is_one_line_without_the_password() {
    const WRONG: &str = "wrong-pw-7f3a9";
    let topic = random_topic();
    let started = std::time::Instant::now();
    let output = run(sitemon_sasl(&topic, WRONG).args(["topic", "create"]));
    let elapsed = started.elapsed();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "not one line: {err:?}");
    assert!(
        err.starts_with("error: cannot connect to Kafka at "),
        "{err}"
    );
    assert!(
        err.contains("the broker refused the SASL SCRAM-SHA-256 login of user sitemon")
            && err.contains("KAFKA_SASL_PASSWORD"),
        "{err}"
    );
    assert!(!err.contains(WRONG), "{err}");
    // The words are the proof; this only says it was not the 20 s connect deadline.
    assert!(
        elapsed < std::time::Duration::from_secs(10),
        "refused after {elapsed:?}"
    );
}
