//! sitemon-core against the real PostgreSQL: TLS, migrations and the sites table.

use sitemon_core::{DatabaseConfig, Error, NewSite, db};
use sitemon_testkit::{TestDb, services};
use sqlx::PgPool;

async fn uses_tls(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl")
}

fn with_params(url: &str, params: &str) -> String {
    let base = url.split_once('?').map_or(url, |(base, _)| base);
    format!("{base}?{params}")
}

#[tokio::test]
async fn sslmode_require_encrypts() {
    let url = with_params(&services().database_url, "sslmode=require");
    let pool = db::connect(&DatabaseConfig::from_url(&url).expect("parses"), 1)
        .await
        .expect("connects over TLS");
    assert!(uses_tls(&pool).await);
}

#[tokio::test]
async fn sslmode_verify_full_checks_the_server_against_our_ca() {
    let ca = services().cert_dir.join("ca.pem");
    let url = with_params(
        &services().database_url,
        &format!("sslmode=verify-full&sslrootcert={}", ca.display()),
    );
    let pool = db::connect(&DatabaseConfig::from_url(&url).expect("parses"), 1)
        .await
        .expect("the server certificate is signed by our CA for 127.0.0.1");
    assert!(uses_tls(&pool).await);
}

#[tokio::test]
async fn sslmode_disable_does_not_encrypt() {
    let url = with_params(&services().database_url, "sslmode=disable");
    let pool = db::connect(&DatabaseConfig::from_url(&url).expect("parses"), 1)
        .await
        .expect("plain connection");
    assert!(!uses_tls(&pool).await);
}

/// A wrong password is refused at once (sqlx does not retry it) and reported as an
/// authentication failure that names the server and DATABASE_URL, never the password.
#[tokio::test]
async fn wrong_password_is_reported_without_the_password() {
    const WRONG: &str = "wrong-pw-7f3a9";
    let url = services()
        .database_url
        .replacen("sitemon:sitemon@", &format!("sitemon:{WRONG}@"), 1);
    assert_ne!(
        url,
        services().database_url,
        "DATABASE_URL has no password to change"
    );
    let config = DatabaseConfig::from_url(&url).expect("parses");
    let started = std::time::Instant::now();
    let error = db::connect(&config, 1).await.expect_err("wrong password");
    let elapsed = started.elapsed();
    let message = error.to_string();
    assert!(
        matches!(error, Error::DatabaseAuth { .. }) && error.is_auth_failure(),
        "{message}"
    );
    assert!(message.contains("127.0.0.1:5432/sitemon"), "{message}");
    assert!(message.contains("DATABASE_URL"), "{message}");
    assert!(!message.contains(WRONG), "{message}");
    // The kind above is the proof; this only says it was not the pool's acquire timeout.
    assert!(elapsed < std::time::Duration::from_secs(10), "{elapsed:?}");
    // The lease connection (not pooled) says the same: `sitemon-consume`'s
    // `tests/lease.rs`, `wrong_password_is_reported_without_the_password`.
}

#[tokio::test]
async fn migrations_apply_once() {
    let test = TestDb::empty().await;
    db::migrate(&test.pool).await.expect("first run");
    db::migrate(&test.pool)
        .await
        .expect("second run is a no-op");
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&test.pool)
        .await
        .expect("count");
    assert_eq!(applied as usize, db::MIGRATOR.iter().count());
    let offset_type: String = sqlx::query_scalar(
        "SELECT data_type FROM information_schema.columns
         WHERE table_name = 'website_status' AND column_name = 'kafka_offset_id'",
    )
    .fetch_one(&test.pool)
    .await
    .expect("column");
    assert_eq!(offset_type, "bigint");
    test.drop_database().await;
}

#[tokio::test]
async fn sites_add_list_remove_and_cascade() {
    let test = TestDb::migrated().await;
    let pool = &test.pool;
    let site = NewSite::new("http://127.0.0.1:8080/health", 30, Some("ok")).expect("valid");
    let id = db::insert_site(pool, &site).await.expect("inserts");
    match db::insert_site(pool, &site).await {
        Err(Error::DuplicateUrl { existing_id, .. }) => assert_eq!(existing_id, id),
        other => panic!("expected a duplicate, got {other:?}"),
    }
    let sites = db::list_sites(pool).await.expect("lists");
    assert_eq!(sites.len(), 1);
    assert_eq!(sites[0].id, id);
    assert_eq!(sites[0].settings.interval, 30);
    assert_eq!(sites[0].settings.regex.as_deref(), Some("ok"));

    // History goes with its site.
    sqlx::query(
        "INSERT INTO website_status
             (kafka_topic, kafka_partition_id, kafka_offset_id, website_id, timestamp_utc, request_info)
         VALUES ('t', 0, 5000000000, $1, now(), '{}')",
    )
    .bind(id)
    .execute(pool)
    .await
    .expect("a 64-bit offset fits");
    db::delete_site(pool, i64::from(id)).await.expect("deletes");
    let history: i64 = sqlx::query_scalar("SELECT count(*) FROM website_status")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(history, 0);
    assert!(matches!(
        db::delete_site(pool, i64::from(id)).await,
        Err(Error::UnknownSite { .. })
    ));
    assert!(matches!(
        db::delete_site(pool, i64::MAX).await,
        Err(Error::UnknownSite { .. })
    ));
    test.drop_database().await;
}

#[tokio::test]
async fn the_schema_refuses_what_validation_refuses() {
    let test = TestDb::migrated().await;
    for interval in [0, -1, 86_401] {
        let inserted = sqlx::query("INSERT INTO websites (url, check_interval) VALUES ($1, $2)")
            .bind(format!("http://example.invalid/{interval}"))
            .bind(interval)
            .execute(&test.pool)
            .await;
        assert!(inserted.is_err(), "interval {interval} was accepted");
    }
    test.drop_database().await;
}
