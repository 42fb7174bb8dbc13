//! Schema migrations, embedded in the binary. Each database has its own folder
//! with the same versions; a database newer than the binary is refused.

pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../migrations/sqlite/0001_init.sql") },
    Migration { version: 2, name: "job_leases", sql: include_str!("../../migrations/sqlite/0002_job_leases.sql") },
    Migration { version: 3, name: "watcher", sql: include_str!("../../migrations/sqlite/0003_watcher.sql") },
    Migration { version: 4, name: "dashboard", sql: include_str!("../../migrations/sqlite/0004_dashboard.sql") },
];

pub const POSTGRES: &[Migration] = &[
    Migration { version: 1, name: "init", sql: include_str!("../../migrations/postgres/0001_init.sql") },
    Migration { version: 2, name: "job_leases", sql: include_str!("../../migrations/postgres/0002_job_leases.sql") },
    Migration { version: 3, name: "watcher", sql: include_str!("../../migrations/postgres/0003_watcher.sql") },
    Migration { version: 4, name: "dashboard", sql: include_str!("../../migrations/postgres/0004_dashboard.sql") },
];

pub fn latest(migrations: &[Migration]) -> i64 {
    migrations.last().map_or(0, |m| m.version)
}
