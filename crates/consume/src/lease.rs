//! Sharing numbered resources (Kafka partitions, buckets of sites) fairly among the live
//! members of a group, with PostgreSQL session-level advisory locks and no coordinator.
//!
//! Each member holds, on one **dedicated** connection (a pooled connection would leak or lose
//! its locks):
//! - a *membership* lock, `(member class, random id)`: the number of such locks that are granted
//!   is the number of live members;
//! - one *resource* lock `(resource class, n)` for every resource `n` it owns.
//!
//! A member that dies loses its connection and with it every lock: PostgreSQL releases them
//! as soon as it sees the connection close (at once for a killed process; for a silent network
//! the lease connection sets TCP keepalives of about 11 s). The others take the freed
//! resources on their next [`LeaseGroup::rebalance`].
//!
//! With `P` resources and `W` live members each member aims for at most `ceil(P / W)`:
//! a member over its share gives the surplus back (after the caller has stopped using it,
//! through [`LeaseGroup::release`]), a member under its share takes free resources.
//!
//! Session-level locks do not survive PgBouncer in transaction mode (Aiven's connection pooler
//! included): the lease connection must go straight to PostgreSQL.

use std::collections::BTreeSet;
use std::time::Duration;

use sqlx::{Connection as _, PgConnection, PgExecutor};

use sitemon_core::config::DatabaseConfig;
#[cfg(doc)]
use sitemon_core::error::Error;
use sitemon_core::error::Result;
use sitemon_core::retry;

/// How long one lease statement may take before the lease connection counts as lost.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one [`LeaseGroup::rebalance`] changed or asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rebalance {
    /// Resources this member now owns and may start using.
    pub acquired: Vec<i32>,
    /// Resources this member owns beyond its share: stop using them, then
    /// [`LeaseGroup::release`] each.
    pub surplus: Vec<i32>,
    /// Live members seen, this one included.
    pub members: u32,
}

/// One member's place in a group.
#[derive(Debug)]
pub struct LeaseGroup {
    /// The dedicated session that holds every lock of this member.
    conn: PgConnection,
    /// First key of the resource locks.
    resource_class: i32,
    /// First key of the membership locks.
    member_class: i32,
    /// Second key of this member's membership lock.
    member_id: i32,
    /// The lease connection's backend process id, as `pg_locks.pid` shows it.
    backend_pid: i32,
    /// The resources this member holds.
    held: BTreeSet<i32>,
}

/// A stable 31-bit key for a name (FNV-1a), the same in every version and on every machine.
fn class_key(kind: &str, group: &str) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in kind.bytes().chain([b':']).chain(group.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash & 0x7fff_ffff) as i32
}

/// The granted advisory locks of the current database with first key `classid`: the one
/// place that reads `pg_locks`. Advisory locks taken with two `int4` keys show
/// `objsubid = 2`, the first key in `classid` and the second in `objid`.
macro_rules! granted_locks {
    ($($rest:literal),*) => {
        concat!(
            "SELECT classid::bigint AS class, objid::bigint AS resource, pid FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 2
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            $($rest),*
        )
    };
}

/// The fair share of `total` resources among `members`: `ceil(total / members)`.
fn share(total: i32, members: u32) -> usize {
    usize::try_from(total.max(0))
        .unwrap_or(0)
        .div_ceil(members.max(1) as usize)
}

/// What one member should do to move towards its fair share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Resources to try to take, best first.
    pub(crate) take: Vec<i32>,
    /// Resources held beyond the share, to hand back once unused.
    pub(crate) surplus: Vec<i32>,
}

/// Decides, from one look at the lock table, which resources a member takes and which it
/// gives back. `held` are the member's resources, `taken` every resource some member
/// (this one included) holds, `total` the number of resources (`0..total`), `members` the
/// live members, and `me` a number of the member's own (its random id) from which it starts
/// looking, so that members joining together do not all race for resource 0.
///
/// Resources that no longer exist (`>= total`) are surplus first, then the highest numbers
/// beyond the share; free resources are taken up to the share.
pub(crate) fn plan(
    held: &BTreeSet<i32>,
    taken: &BTreeSet<i32>,
    total: i32,
    members: u32,
    me: i32,
) -> Plan {
    let total = total.max(0);
    let share = share(total, members);
    let mut surplus: Vec<i32> = held.iter().copied().filter(|r| *r >= total).collect();
    let in_range = held.len() - surplus.len();
    surplus.extend(
        held.iter()
            .rev()
            .filter(|r| **r < total)
            .take(in_range.saturating_sub(share)),
    );
    let need = share.saturating_sub(held.len());
    let take = if need == 0 || total == 0 {
        Vec::new()
    } else {
        let start = me.rem_euclid(total);
        (start..total)
            .chain(0..start)
            .filter(|r| !held.contains(r) && !taken.contains(r))
            .take(need)
            .collect()
    };
    Plan { take, surplus }
}

impl LeaseGroup {
    /// Joins the group `name` (e.g. `sync:website_status`) on a new dedicated connection.
    ///
    /// # Errors
    /// [`Error::DatabaseAuth`] when PostgreSQL refuses the login, [`Error::DatabaseConnect`]
    /// when it cannot be reached; [`Error::Database`].
    pub async fn join(config: &DatabaseConfig, name: &str) -> Result<Self> {
        let connect = async {
            PgConnection::connect_with(config.options())
                .await
                .map_err(|e| sitemon_core::db::connect_error(config, &e))
        };
        let mut conn = retry::timeout(
            &format!("connecting to PostgreSQL at {}", config.target()),
            sitemon_core::db::CONNECT_TIMEOUT,
            connect,
        )
        .await?;
        // A member that vanishes without closing its connection (a lost network) must lose
        // its locks soon: keepalive probes after 5 s idle, every 2 s, 3 tries.
        bounded(
            "setting keepalives on the lease connection",
            sqlx::query(
                "SELECT set_config('tcp_keepalives_idle', '5', false),
                        set_config('tcp_keepalives_interval', '2', false),
                        set_config('tcp_keepalives_count', '3', false),
                        set_config('application_name', $1, false)",
            )
            .bind(application_name(name))
            .execute(&mut conn),
        )
        .await?;
        let backend_pid: i32 = bounded(
            "asking for the lease connection's backend",
            sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn),
        )
        .await?;
        let member_class = class_key("sitemon-member", name);
        let member_id = loop {
            let candidate = (uuid::Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff) as i32;
            let locked: bool = bounded(
                "joining the lease group",
                sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                    .bind(member_class)
                    .bind(candidate)
                    .fetch_one(&mut conn),
            )
            .await?;
            if locked {
                break candidate;
            }
        };
        Ok(Self {
            conn,
            resource_class: class_key("sitemon-lease", name),
            member_class,
            member_id,
            backend_pid,
            held: BTreeSet::new(),
        })
    }

    /// What another connection needs to check, inside its own transaction, that this
    /// member still holds its leases ([`LeaseHolder::holds_all`]).
    pub fn holder(&self) -> LeaseHolder {
        LeaseHolder {
            backend_pid: self.backend_pid,
            member_class: self.member_class,
            member_id: self.member_id,
            resource_class: self.resource_class,
        }
    }

    /// The resources this member holds.
    pub fn held(&self) -> &BTreeSet<i32> {
        &self.held
    }

    /// The number of live members, this one included.
    ///
    /// # Errors
    /// [`Error::Database`] when the lease connection is gone: every lease is lost then, and
    /// the caller must stop using all of them.
    pub async fn members(&mut self) -> Result<u32> {
        Ok(self.look().await?.0)
    }

    /// One look at the lock table: the live members, and the resources some member holds.
    async fn look(&mut self) -> Result<(u32, BTreeSet<i32>)> {
        let rows: Vec<(i64, i64, i32)> = bounded(
            "looking at the lease group",
            sqlx::query_as(granted_locks!(" AND classid::bigint IN ($1, $2)"))
                .bind(i64::from(self.member_class))
                .bind(i64::from(self.resource_class))
                .fetch_all(&mut self.conn),
        )
        .await?;
        let member_class = i64::from(self.member_class);
        let members = rows
            .iter()
            .filter(|(class, ..)| *class == member_class)
            .count();
        let taken = rows
            .iter()
            .filter(|(class, ..)| *class != member_class)
            .filter_map(|(_, resource, _)| i32::try_from(*resource).ok())
            .collect();
        Ok((u32::try_from(members).unwrap_or(u32::MAX).max(1), taken))
    }

    /// Takes free resources up to this member's fair share of `total` (`0..total`) and names
    /// the resources it holds beyond that share.
    ///
    /// Two round trips whatever the number of resources (a checker's 256 buckets over a
    /// WAN): one look at the lock table, then one statement that tries exactly the
    /// resources `plan` picked. A resource another member took meanwhile is simply not
    /// granted; the next rebalance tries again.
    ///
    /// # Errors
    /// [`Error::Database`] when the lease connection is gone: every lease is lost then.
    pub async fn rebalance(&mut self, total: i32) -> Result<Rebalance> {
        let (members, taken) = self.look().await?;
        let Plan { take, surplus } = plan(&self.held, &taken, total, members, self.member_id);
        let mut acquired = Vec::new();
        if !take.is_empty() {
            let mut granted = self.try_lock_all(&take).await?;
            granted.sort_unstable_by_key(|r| take.iter().position(|c| c == r));
            for resource in granted {
                self.held.insert(resource);
                acquired.push(resource);
            }
        }
        Ok(Rebalance {
            acquired,
            surplus,
            members,
        })
    }

    /// Tries to lock every one of `resources` (each exactly once); returns those granted.
    async fn try_lock_all(&mut self, resources: &[i32]) -> Result<Vec<i32>> {
        bounded(
            "taking leases",
            sqlx::query_scalar(
                "SELECT r FROM unnest($2::int4[]) AS r
                 WHERE pg_try_advisory_lock($1, r)",
            )
            .bind(self.resource_class)
            .bind(resources)
            .fetch_all(&mut self.conn),
        )
        .await
    }

    /// Gives a resource back, for another member to take.
    ///
    /// # Errors
    /// [`Error::Database`] when the lease connection is gone (then the lease is gone too).
    pub async fn release(&mut self, resource: i32) -> Result<()> {
        if self.held.remove(&resource) {
            bounded(
                "giving a lease back",
                sqlx::query_scalar::<_, bool>("SELECT pg_advisory_unlock($1, $2)")
                    .bind(self.resource_class)
                    .bind(resource)
                    .fetch_one(&mut self.conn),
            )
            .await?;
        }
        Ok(())
    }

    /// Whether this member's session still holds `resource`, asked of PostgreSQL itself.
    ///
    /// # Errors
    /// [`Error::Database`] when the lease connection is gone.
    pub async fn still_holds(&mut self, resource: i32) -> Result<bool> {
        bounded(
            "checking a lease",
            sqlx::query_scalar(concat!(
                "SELECT EXISTS (",
                granted_locks!(
                    " AND pid = pg_backend_pid() AND classid::bigint = $1",
                    " AND objid::bigint = $2"
                ),
                ")"
            ))
            .bind(i64::from(self.resource_class))
            .bind(i64::from(resource))
            .fetch_one(&mut self.conn),
        )
        .await
    }

    /// Leaves the group: every lock is released at once, so the others can take over on their
    /// next rebalance.
    ///
    /// # Errors
    /// [`Error::Database`]; the locks go with the connection anyway.
    pub async fn leave(mut self) -> Result<()> {
        bounded(
            "leaving the lease group",
            sqlx::query("SELECT pg_advisory_unlock_all()").execute(&mut self.conn),
        )
        .await?;
        let _ = self.conn.close().await;
        Ok(())
    }
}

/// The identity of one member's lease session, to check its leases from another connection.
///
/// A writer that stores data for leased resources on a pooled connection calls
/// [`LeaseHolder::holds_all`] inside its transaction, just before the commit: a member whose
/// lease connection died (and whose resources may already be someone else's) then fails the
/// transaction instead of storing a stale batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseHolder {
    /// `pg_backend_pid()` of the lease connection.
    backend_pid: i32,
    member_class: i32,
    /// Random per member: a backend pid reused by a new session cannot pass for this one.
    member_id: i32,
    resource_class: i32,
}

impl LeaseHolder {
    /// Whether the lease session is still alive (its membership lock is granted) and holds
    /// every one of `resources`, asked of PostgreSQL's lock table on `executor` (any
    /// connection to the same database, a transaction included).
    ///
    /// # Errors
    /// [`Error::Database`] when the statement fails.
    pub async fn holds_all<'e, E>(&self, executor: E, resources: &[i32]) -> Result<bool>
    where
        E: PgExecutor<'e>,
    {
        let mut wanted = resources.to_vec();
        wanted.sort_unstable();
        wanted.dedup();
        let granted: i64 = bounded(
            "checking the leases",
            sqlx::query_scalar(concat!(
                "SELECT count(*) FROM (",
                granted_locks!(
                    " AND pid = $1 AND ((classid::bigint = $2 AND objid::bigint = $3)",
                    " OR (classid::bigint = $4 AND objid::bigint = ANY($5::bigint[])))"
                ),
                ") AS held"
            ))
            .bind(self.backend_pid)
            .bind(i64::from(self.member_class))
            .bind(i64::from(self.member_id))
            .bind(i64::from(self.resource_class))
            .bind(wanted.iter().map(|r| i64::from(*r)).collect::<Vec<_>>())
            .fetch_one(executor),
        )
        .await?;
        Ok(usize::try_from(granted).ok() == Some(wanted.len() + 1))
    }
}

/// Who holds which resource of the group `name` now: resource → backend pid of the holder's
/// lease connection, from `pg_locks` (for tests, and for operators asking "who reads what").
///
/// # Errors
/// [`Error::Database`] when the statement fails.
pub async fn holders<'e, E>(executor: E, name: &str) -> Result<std::collections::BTreeMap<i32, i32>>
where
    E: PgExecutor<'e>,
{
    let rows: Vec<(i64, i64, i32)> = bounded(
        "listing the lease holders",
        sqlx::query_as(granted_locks!(" AND classid::bigint = $1"))
            .bind(i64::from(class_key("sitemon-lease", name)))
            .fetch_all(executor),
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(_, resource, pid)| Some((i32::try_from(resource).ok()?, pid)))
        .collect())
}

/// `sitemon lease <group>`, cut to the 63 bytes PostgreSQL keeps (it would otherwise cut it
/// itself, with a notice at every join).
fn application_name(group: &str) -> String {
    let mut name = format!("sitemon lease {group}");
    let mut end = name.len().min(63);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    name
}

/// Runs one lease statement with [`STATEMENT_TIMEOUT`].
async fn bounded<T>(
    doing: &'static str,
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T> {
    sitemon_core::statement::bounded(doing, STATEMENT_TIMEOUT, statement).await
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{Plan, class_key, plan};

    fn set(items: &[i32]) -> BTreeSet<i32> {
        items.iter().copied().collect()
    }

    #[test]
    fn a_lone_member_takes_everything_free_from_its_own_start() {
        let p = plan(&set(&[]), &set(&[1]), 6, 1, 10);
        assert_eq!(p.surplus, Vec::<i32>::new());
        assert_eq!(
            p.take,
            vec![4, 5, 0, 2, 3],
            "starts at 10 % 6, skips the taken 1"
        );
    }

    #[test]
    fn takes_only_up_to_the_ceiling_share() {
        // 7 resources, 3 members: a share of 3.
        let p = plan(&set(&[0]), &set(&[0, 1, 2, 3]), 7, 3, 0);
        assert_eq!(p.take, vec![4, 5], "two more to reach 3");
        assert!(p.surplus.is_empty());
    }

    #[test]
    fn gives_back_the_highest_beyond_the_share_and_vanished_ones_first() {
        // 6 resources, 2 members: a share of 3; 9 no longer exists.
        let held = set(&[0, 1, 2, 3, 4, 9]);
        let p = plan(&held, &held, 6, 2, 0);
        assert_eq!(p.surplus, vec![9, 4, 3]);
        assert!(p.take.is_empty());
    }

    #[test]
    fn no_resources_means_everything_held_is_surplus() {
        let p = plan(&set(&[0, 1]), &set(&[0, 1]), 0, 1, 3);
        assert_eq!(
            p,
            Plan {
                take: vec![],
                surplus: vec![0, 1]
            }
        );
    }

    #[test]
    fn a_full_share_takes_nothing_and_zero_members_counts_as_one() {
        let p = plan(&set(&[2, 3]), &set(&[2, 3]), 4, 2, 0);
        assert_eq!(p, Plan::default());
        let p = plan(&set(&[]), &set(&[]), 3, 0, -7);
        assert_eq!(
            p.take,
            vec![2, 0, 1],
            "a negative id starts at its Euclidean remainder"
        );
    }

    #[test]
    fn application_names_fit_postgres() {
        assert_eq!(super::application_name("g"), "sitemon lease g");
        let long = super::application_name(&format!("check:{}:é", "t".repeat(60)));
        assert!(long.len() <= 63 && long.starts_with("sitemon lease check:ttt"));
    }

    #[test]
    fn class_keys_are_stable_and_distinct() {
        assert_eq!(
            class_key("sitemon-lease", "sync:website_status"),
            class_key("sitemon-lease", "sync:website_status")
        );
        assert_ne!(
            class_key("sitemon-lease", "g"),
            class_key("sitemon-member", "g")
        );
        assert_ne!(
            class_key("sitemon-lease", "a"),
            class_key("sitemon-lease", "b")
        );
        assert!(class_key("sitemon-lease", "x") >= 0);
    }
}
