//! Partition and bucket leases on the real PostgreSQL.

use std::collections::BTreeSet;

use sitemon_consume::lease::LeaseGroup;
use sitemon_core::{DatabaseConfig, Error};
use sitemon_testkit::{services, unique_name};

fn config() -> DatabaseConfig {
    DatabaseConfig::from_url(&services().database_url).expect("DATABASE_URL parses")
}

/// Rebalances every member until nobody changes anything, releasing surplus as a caller would.
async fn settle(members: &mut [&mut LeaseGroup], total: i32) {
    for _ in 0..10 {
        let mut changed = false;
        for member in members.iter_mut() {
            let plan = member.rebalance(total).await.expect("rebalances");
            changed |= !plan.acquired.is_empty() || !plan.surplus.is_empty();
            for resource in plan.surplus {
                member.release(resource).await.expect("releases");
            }
        }
        if !changed {
            return;
        }
    }
    panic!("the group did not settle in 10 rounds");
}

fn assert_partition_of(total: i32, members: &[&LeaseGroup]) {
    let mut all = BTreeSet::new();
    for member in members {
        for resource in member.held() {
            assert!(all.insert(*resource), "resource {resource} is held twice");
        }
    }
    assert_eq!(
        all,
        (0..total).collect::<BTreeSet<_>>(),
        "every resource is held"
    );
}

#[tokio::test]
async fn members_share_fairly_and_take_over_from_the_dead() {
    let group = unique_name("lease");
    let mut a = LeaseGroup::join(&config(), &group).await.expect("a joins");
    settle(&mut [&mut a], 6).await;
    assert_eq!(a.held().len(), 6, "alone, a holds everything");

    let mut b = LeaseGroup::join(&config(), &group).await.expect("b joins");
    let mut c = LeaseGroup::join(&config(), &group).await.expect("c joins");
    assert_eq!(a.members().await.expect("counts"), 3);
    settle(&mut [&mut a, &mut b, &mut c], 6).await;
    for member in [&a, &b, &c] {
        assert_eq!(member.held().len(), 2, "ceil(6 / 3)");
    }
    assert_partition_of(6, &[&a, &b, &c]);
    for resource in a.held().clone() {
        assert!(a.still_holds(resource).await.expect("asks"));
    }

    // c dies without a word: its connection drops and PostgreSQL frees its locks.
    drop(c);
    let mut freed = false;
    for _ in 0..50 {
        if a.members().await.expect("counts") == 2 {
            freed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(freed, "the dead member's locks were not released");
    settle(&mut [&mut a, &mut b], 6).await;
    assert_eq!(a.held().len(), 3);
    assert_eq!(b.held().len(), 3);
    assert_partition_of(6, &[&a, &b]);

    // b leaves cleanly: a takes everything on its next rebalance.
    b.leave().await.expect("leaves");
    settle(&mut [&mut a], 6).await;
    assert_partition_of(6, &[&a]);

    // The resource count grows: the new resources are taken too.
    settle(&mut [&mut a], 8).await;
    assert_partition_of(8, &[&a]);
    a.leave().await.expect("leaves");
}

#[tokio::test]
async fn groups_do_not_share() {
    let mut x = LeaseGroup::join(&config(), &unique_name("lease-x"))
        .await
        .expect("joins");
    let mut y = LeaseGroup::join(&config(), &unique_name("lease-y"))
        .await
        .expect("joins");
    settle(&mut [&mut x], 4).await;
    settle(&mut [&mut y], 4).await;
    assert_eq!(x.held().len(), 4);
    assert_eq!(y.held().len(), 4, "another group's locks are not ours");
    x.leave().await.expect("leaves");
    y.leave().await.expect("leaves");
}

#[tokio::test]
async fn another_connection_sees_whether_the_leases_are_held() {
    use sqlx::Connection as _;
    let group = unique_name("lease-check");
    let mut a = LeaseGroup::join(&config(), &group).await.expect("a joins");
    let mut b = LeaseGroup::join(&config(), &group).await.expect("b joins");
    settle(&mut [&mut a, &mut b], 4).await;
    let (a_held, b_held): (Vec<i32>, Vec<i32>) = (
        a.held().iter().copied().collect(),
        b.held().iter().copied().collect(),
    );
    let holder = a.holder();
    let mut other = sqlx::PgConnection::connect_with(config().options())
        .await
        .expect("connects");
    assert!(holder.holds_all(&mut other, &a_held).await.expect("asks"));
    assert!(holder.holds_all(&mut other, &[]).await.expect("asks"));
    assert!(
        !holder.holds_all(&mut other, &b_held).await.expect("asks"),
        "b's leases are not a's"
    );
    let all: Vec<i32> = (0..4).collect();
    assert!(!holder.holds_all(&mut other, &all).await.expect("asks"));

    let holders = sitemon_consume::lease::holders(&mut other, &group)
        .await
        .expect("lists");
    assert_eq!(holders.keys().copied().collect::<Vec<_>>(), all);
    assert_eq!(
        holders.values().collect::<BTreeSet<_>>().len(),
        2,
        "two holders"
    );

    // Inside a transaction, as the sync's writer asks.
    let mut tx = other.begin().await.expect("begins");
    assert!(holder.holds_all(&mut *tx, &a_held).await.expect("asks"));
    a.release(a_held[0]).await.expect("releases");
    assert!(!holder.holds_all(&mut *tx, &a_held).await.expect("asks"));
    tx.rollback().await.expect("rolls back");

    // Once a is gone, nothing of it holds, whatever it held.
    a.leave().await.expect("leaves");
    assert!(
        !holder
            .holds_all(&mut other, &a_held[1..])
            .await
            .expect("asks")
    );
    assert!(!holder.holds_all(&mut other, &[]).await.expect("asks"));
    b.leave().await.expect("leaves");
}

/// A wrong password is refused on the lease connection (not pooled) as on the pool (core's
/// `tests/database.rs`): an authentication failure that never quotes the password.
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

    let error = LeaseGroup::join(&config, "auth-test")
        .await
        .expect_err("wrong password");
    assert!(
        matches!(error, Error::DatabaseAuth { .. }) && error.is_auth_failure(),
        "{error}"
    );
    assert!(!error.to_string().contains(WRONG), "{error}");
}
