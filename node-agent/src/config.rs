//! Agent configuration: defaults, then a TOML file (`--config PATH`), then `HAPULSE_AGENT_*`
//! environment variables (nested keys with a double underscore:
//! `HAPULSE_AGENT_KEEPALIVED__PID_FILE`).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use hapulse_protocol::{valid_name, ServiceCheckKind};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Everything the agent needs to run. `Debug` never shows the token.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Log lines on standard error: `text` (default) or `json`, one object per line, for a log
    /// shipper. `RUST_LOG` sets the levels.
    #[serde(default)]
    pub log_format: hapulse_protocol::logging::LogFormat,
    /// Base URL of the hapulse server, e.g. `https://hapulse.example.net`, or of each of its
    /// replicas (a list, or in the environment one string separated by commas): the agent
    /// reports to the one that leads. Plain `http://` only to a loopback address, or with
    /// `allow_insecure_http`.
    #[serde(deserialize_with = "one_or_more_urls")]
    pub server_url: Vec<String>,
    /// Allow a plain-HTTP `server_url` that is not on loopback: the node credential and every
    /// report then cross the network in clear (default false; a lab or a network you trust).
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Stable id of this node; unique across every cluster the server knows.
    pub node_id: String,
    /// Cluster this node belongs to.
    pub cluster: String,
    /// One-time enrollment token from `hapulse-server enroll NODE_ID` (or `POST
    /// /api/v1/enrollments`), needed only until the agent holds a credential
    /// (`state_dir/credential`). Never logged.
    #[serde(
        default,
        serialize_with = "serialize_redacted_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub enrollment_token: Option<SecretString>,
    /// PEM CA certificates that sign the server's HTTPS certificate, besides the system's roots
    /// (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate naming this node (a DNS subject alternative name), for a server
    /// that demands one (`tls.client_ca_file`); with `client_key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key_file: Option<PathBuf>,
    /// Time between two heartbeats (default 1 s). A state change is sent at once, whatever this is.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Timeout of one HTTP request to the server (default 5 s).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Longest wait between two retries while the server is unreachable (default 30 s); waits
    /// double from `heartbeat_interval` up to this, with ±20 % jitter.
    #[serde(with = "humantime_serde")]
    pub max_retry_backoff: Duration,
    /// Directory for the spool of state changes not yet accepted by the server.
    pub state_dir: PathBuf,
    /// Most state-change reports kept in the spool; the oldest is dropped beyond it (default 10000).
    pub spool_capacity: usize,
    /// Longest wait for one replication source to answer (default 2 s); beyond it the link is
    /// reported `down`.
    #[serde(with = "humantime_serde")]
    pub probe_timeout: Duration,
    /// PostgreSQL replication probes (`[[postgresql]]` sections).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postgresql: Vec<PostgresSettings>,
    /// MySQL/MariaDB replication probes (`[[mysql]]` sections).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mysql: Vec<MysqlSettings>,
    /// DRBD probes (`[[drbd]]` sections).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drbd: Vec<DrbdSettings>,
    /// keepalived probe.
    pub keepalived: KeepalivedSettings,
    /// What the server may ask this host to do. Nothing is enabled by default.
    #[serde(default)]
    pub actions: ActionSettings,
    /// Reachability probes for automatic failover, and self-fencing (`[arbitration]`). Absent:
    /// none; the server then never counts this node as a witness or a candidate that reaches
    /// the reference address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arbitration: Option<ArbitrationSettings>,
    /// Health endpoints for load balancers (`[health]`, see [`crate::health`]). Absent: not
    /// served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSettings>,
    /// Service checks (`[[checks]]`, see [`crate::checks`]), reported with every heartbeat.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckSettings>,
    /// Time between two ARP checks of the cluster's VIPs (default 10 s; 2 s to 1 h, or `0s` for
    /// none): the agent asks the LAN who has each VIP of its VRRP instances, as `arping` does,
    /// and reports the MAC addresses that answered (see [`crate::arp`]). Needs `CAP_NET_RAW`.
    #[serde(with = "humantime_serde", default = "default_arp_check_interval")]
    pub arp_check_interval: Duration,
    /// The Pacemaker probe (`[pacemaker]`, see [`crate::pacemaker`]) for hosts run by
    /// Pacemaker/Corosync. Absent: not probed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pacemaker: Option<PacemakerSettings>,
}

fn default_arp_check_interval() -> Duration {
    Duration::from_secs(10)
}

/// `[pacemaker]`: how the agent asks Pacemaker for the cluster's status and moves resources.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PacemakerSettings {
    /// The `crm_mon` binary (default `crm_mon`, found on `PATH`).
    #[serde(default = "default_crm_mon")]
    pub crm_mon: PathBuf,
    /// The `crm_resource` binary (`pacemaker_move`; default `crm_resource`).
    #[serde(default = "default_crm_resource")]
    pub crm_resource: PathBuf,
    /// Ask with `crm_mon --as-xml` instead of `--output-as=xml`: Pacemaker before 2.0.3 only
    /// knows the former (default false).
    #[serde(default)]
    pub legacy_xml: bool,
    /// Time between two `crm_mon` runs (default 2 s, at least 500 ms).
    #[serde(default = "default_pacemaker_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Longest one `crm_mon` or `crm_resource` run may take (default 5 s, at least 100 ms); it
    /// is killed beyond it.
    #[serde(default = "default_pacemaker_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_crm_mon() -> PathBuf {
    PathBuf::from("crm_mon")
}

fn default_crm_resource() -> PathBuf {
    PathBuf::from("crm_resource")
}

fn default_pacemaker_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_pacemaker_timeout() -> Duration {
    Duration::from_secs(5)
}

impl PacemakerSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(500) {
            return invalid("pacemaker.interval", "must be at least 500ms");
        }
        if self.timeout < Duration::from_millis(100) {
            return invalid("pacemaker.timeout", "must be at least 100ms");
        }
        Ok(())
    }
}

/// One `[[checks]]` entry: a service asked every `interval` (the `mon` idea).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSettings {
    /// Unique on this host, 1-64 characters of `A-Z a-z 0-9 . _ -` (`pg-port`).
    pub name: String,
    /// How to ask: `tcp`, `http`, `icmp` or `exec`.
    pub kind: ServiceCheckKind,
    /// What to ask: `HOST:PORT` (tcp), an `http://` or `https://` URL (http), an IP address
    /// (icmp). None for exec, which has `command`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// exec: the program and its arguments, run without a shell, with a cleared environment;
    /// passing when it exits 0 within `timeout`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// http: the status that counts as passing (default 200). Redirects are not followed.
    #[serde(default = "default_expect_status")]
    pub expect_status: u16,
    /// http: text the body must contain, besides the status (default none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_body: Option<String>,
    /// Time between two attempts (default 2 s, at least 100 ms).
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Longest one attempt may take (default 1 s, below `interval`); beyond it the attempt
    /// fails (an exec program is killed).
    #[serde(default = "default_check_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Successes in a row that make a failing check pass again (default 2).
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Failures in a row that make a passing check fail (default 3).
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// The VRRP instance whose service this is (`VI_1`): the server does not promote a host
    /// where it fails for that instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vrrp_instance: Option<String>,
    /// The replication link whose service this is, `kind:name` as the agent reports links
    /// (`postgresql:pg`, `mysql:db`, `drbd:r0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    /// A keepalived track file the agent keeps at `0` while the check passes and `1` while it
    /// fails: with `vrrp_track_file … weight -N` keepalived lowers the instance's priority by
    /// N, as with a `vrrp_script`. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_file: Option<PathBuf>,
}

fn default_expect_status() -> u16 {
    200
}

fn default_check_interval() -> Duration {
    Duration::from_secs(2)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(1)
}

fn default_rise() -> u32 {
    2
}

fn default_fall() -> u32 {
    3
}

/// `[health]`: where the agent answers a load balancer's checks (`GET /primary`, `/replica`,
/// `/read-only`, `/health`, `/liveness`, with Patroni's names and meanings).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSettings {
    /// Address and port to listen on, e.g. `"10.0.0.11:8008"` (8008 is Patroni's port, so an
    /// HAProxy configuration written for Patroni works unchanged). The answers say who is
    /// primary: listen only where the load balancers reach it.
    pub listen: std::net::SocketAddr,
}

/// Commands this agent accepts. An action not listed in `enabled` is refused, whatever the
/// server says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSettings {
    /// Action kinds allowed: `set_priority_offset`, `fence`, `postgres_stop`,
    /// `postgres_promote`, `postgres_follow`, `postgres_start`, `mysql_stop`, `mysql_catch_up`,
    /// `mysql_promote`, `mysql_follow`, `drbd_role`, `hook`, `remove_vip`, `pacemaker_move`
    /// (needs `[pacemaker]`).
    #[serde(default)]
    pub enabled: Vec<String>,
    /// keepalived track files per VRRP instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub track_files: Vec<TrackFileSettings>,
    /// How to stop the PostgreSQL server of a link (`postgres_stop`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub postgres: Vec<PostgresActionSettings>,
    /// How this host's MySQL/MariaDB server of a link follows a new primary (`mysql_follow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mysql: Vec<MysqlActionSettings>,
    /// The operator's hook, run as `HOOK pre|post` with `HAPULSE_*` variables (`hook`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook: Option<PathBuf>,
    /// The `drbdadm` binary (`drbd_role`).
    #[serde(default = "default_drbdadm")]
    pub drbdadm: PathBuf,
    /// Longest a command may run (default 60 s); a child process is killed beyond it.
    #[serde(default = "default_action_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

/// The track files keepalived reads for one instance. keepalived.conf needs, for instance VI_1:
/// `vrrp_track_file hapulse_prio_VI_1 { file PRIORITY_FILE }`,
/// `vrrp_track_file hapulse_fence_VI_1 { file FENCE_FILE }` and, in the instance,
/// `track_file { hapulse_prio_VI_1 weight 1  hapulse_fence_VI_1 weight 0 }`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrackFileSettings {
    /// VRRP instance.
    pub instance: String,
    /// Track file with `weight 1`: its integer is added to the priority.
    pub priority_file: PathBuf,
    /// Track file with `weight 0`: non-zero puts the instance in FAULT.
    pub fence_file: PathBuf,
}

/// How to stop one PostgreSQL server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresActionSettings {
    /// Replication link name (as in `[[postgresql]]`).
    pub link: String,
    /// Program and arguments that stop the server with a fast shutdown, e.g.
    /// `["pg_ctlcluster", "15", "main", "stop", "-m", "fast"]`. Run without a shell.
    pub stop_command: Vec<String>,
    /// The server's data directory; with `pg_controldata`, the agent reports the shutdown
    /// checkpoint after the stop and the switchover waits until the target has replayed past it
    /// (otherwise it waits until the target has nothing left to replay).
    #[serde(default)]
    pub data_directory: Option<PathBuf>,
    /// The `pg_controldata` binary (e.g. `/usr/lib/postgresql/15/bin/pg_controldata`).
    #[serde(default)]
    pub pg_controldata: Option<PathBuf>,
    /// Program and arguments that start the server (`postgres_follow` starts a stopped server
    /// as a standby), e.g. `["pg_ctlcluster", "15", "main", "start"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_command: Vec<String>,
    /// Program and arguments of `pg_rewind` for this server's data directory, run as the
    /// PostgreSQL user, e.g. `["runuser", "-u", "postgres", "--",
    /// "/usr/lib/postgresql/15/bin/pg_rewind", "-D", "/var/lib/postgresql/15/main"]`; the agent
    /// appends `--source-server=CONNINFO --write-recovery-conf`. pg_rewind needs
    /// `wal_log_hints = on` or data checksums. Empty: a stopped server is not rewound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewind_command: Vec<String>,
    /// The operator's re-clone, run when the rewind fails (a fresh `pg_basebackup`, say), with
    /// `HAPULSE_PRIMARY_HOST` and `HAPULSE_PRIMARY_PORT` in its environment; it must leave a
    /// data directory that starts as a standby of that primary. Empty: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reclone_command: Vec<String>,
    /// The connection string a standby here uses to reach a new primary, without host and
    /// port, which `postgres_follow` appends (`user=replicator application_name=h1
    /// passfile=/var/lib/postgresql/.pgpass`). Keep passwords in a passfile, not here: the
    /// string ends up in `postgresql.auto.conf`.
    #[serde(default)]
    pub standby_conninfo: Option<String>,
}

/// How this host's MySQL/MariaDB server of one link replicates from a new primary.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlActionSettings {
    /// Replication link name (as in `[[mysql]]`).
    pub link: String,
    /// The user replicas connect as (`MASTER_USER`), with `REPLICATION SLAVE` on every host.
    pub replication_user: String,
    /// Its password (`MASTER_PASSWORD`); none when the user has none. Never logged.
    #[serde(
        default,
        serialize_with = "serialize_redacted_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub replication_password: Option<SecretString>,
    /// Program and arguments that start the server when `mysql_follow` finds it stopped (an
    /// old primary back after a power cut), e.g. `["systemctl", "start", "mariadb"]`. Configure
    /// `read_only = ON` in the server's own configuration so that it never starts writable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub start_command: Vec<String>,
}

impl Default for ActionSettings {
    fn default() -> Self {
        ActionSettings {
            enabled: Vec::new(),
            track_files: Vec::new(),
            postgres: Vec::new(),
            mysql: Vec::new(),
            hook: None,
            drbdadm: default_drbdadm(),
            timeout: default_action_timeout(),
        }
    }
}

fn default_drbdadm() -> PathBuf {
    PathBuf::from("drbdadm")
}

fn default_action_timeout() -> Duration {
    Duration::from_secs(60)
}

/// Where the agent finds keepalived's state on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepalivedSettings {
    /// The `notify_fifo` path of keepalived's `global_defs`. The agent creates the FIFO when it is
    /// missing and reads one line per state change from it.
    pub notify_fifo: PathBuf,
    /// keepalived's main pid file (`--pid`); the agent sends the JSON-dump signal to this pid and
    /// treats a missing or dead pid as keepalived not running.
    pub pid_file: PathBuf,
    /// Where keepalived writes its JSON dump: always `/tmp/keepalived.json` in keepalived's own
    /// mount namespace.
    pub json_dump: PathBuf,
    /// Where keepalived writes its data dump (`keepalived.data`, asked with
    /// `keepalived --signum=DATA`): sync groups, tracked scripts and interfaces with their state.
    /// Default: `keepalived.data` next to `json_dump`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dump: Option<PathBuf>,
    /// keepalived binary, asked once at start-up for the JSON-dump signal number
    /// (`keepalived --signum=JSON`).
    pub binary: PathBuf,
    /// Time between two full reconciliations from the JSON dump (default 5 s), so a missed FIFO
    /// line cannot leave a stale role.
    #[serde(with = "humantime_serde")]
    pub reconcile_interval: Duration,
    /// Longest wait for keepalived to rewrite its JSON dump after the signal (default 1 s).
    #[serde(with = "humantime_serde")]
    pub dump_timeout: Duration,
}

/// A PostgreSQL server on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// Link name, the same on every node of the cluster (`pg`).
    pub name: String,
    /// Connection string: `postgres://hapulse@127.0.0.1/postgres`, or a local socket,
    /// `postgres:///postgres?host=/var/run/postgresql&user=postgres`. The role needs
    /// `pg_monitor`. Never logged.
    #[serde(serialize_with = "serialize_redacted")]
    pub dsn: SecretString,
    /// VRRP instance whose VIP should be on this link's primary.
    #[serde(default)]
    pub vrrp_instance: Option<String>,
    /// Where the other hosts' standbys reach this PostgreSQL when it is the primary,
    /// `HOST:PORT` (`10.0.0.11:5432`, `[2001:db8::11]:5432`). Reported with the link (raw
    /// `advertise_address`): after a move the server re-points every standby to the new
    /// primary's advertised address. Without it nothing can be re-pointed to this host.
    #[serde(default)]
    pub advertise_address: Option<String>,
}

/// A MySQL or MariaDB server on this host, asked through sqlx's MySQL driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MysqlSettings {
    /// Link name, the same on every node of the cluster (`db`).
    pub name: String,
    /// Connection URL: `mysql://hapulse:PASSWORD@127.0.0.1:3306/`, or the local socket,
    /// `mysql://hapulse:PASSWORD@localhost/?socket=/run/mysqld/mysqld.sock`. The user needs
    /// `REPLICATION CLIENT` (MariaDB: `SLAVE MONITOR`, `BINLOG MONITOR`) to observe and, for
    /// the `mysql_*` actions, `SUPER` (MariaDB: `READ_ONLY ADMIN`, `REPLICATION SLAVE ADMIN`,
    /// `CONNECTION ADMIN`). Password authentication (`mysql_native_password`,
    /// `caching_sha2_password`); never logged.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: SecretString,
    /// VRRP instance whose VIP should be on this link's primary.
    #[serde(default)]
    pub vrrp_instance: Option<String>,
    /// Where the other hosts' replicas reach this server when it is the primary, `HOST:PORT`
    /// (`10.0.0.11:3306`). Reported with the link (raw `advertise_address`): after a move the
    /// server re-points every replica to the new primary's advertised address.
    #[serde(default)]
    pub advertise_address: Option<String>,
}

/// DRBD resources on this host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrbdSettings {
    /// The `drbdsetup` binary.
    #[serde(default = "default_drbdsetup")]
    pub drbdsetup: PathBuf,
    /// Resources to report; all when empty.
    #[serde(default)]
    pub resources: Vec<String>,
    /// VRRP instance whose VIP should be on the resources' Primary.
    #[serde(default)]
    pub vrrp_instance: Option<String>,
}

/// `[arbitration]`: the probes behind automatic failover (see [`crate::arbitration`]). Absent: no
/// probes, no self-fencing.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArbitrationSettings {
    /// The cluster's reference address (the gateway, say), the same on every node.
    pub reference_address: IpAddr,
    /// The other members of the cluster (`[[arbitration.peers]]`).
    #[serde(default)]
    pub peers: Vec<PeerSettings>,
    /// Time between two rounds of probes (default 1 s).
    #[serde(default = "default_arbitration_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Longest wait for an echo reply (default 500 ms).
    #[serde(default = "default_arbitration_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Fence this host's VRRP instances when the reference address, every peer and the server
    /// have been unreachable this long (e.g. `"5s"`). Absent: never self-fence.
    #[serde(default, with = "humantime_serde")]
    pub self_fence_after: Option<Duration>,
    /// With self-fencing, the program and arguments that stop this host's database when it is a
    /// primary (no shell), e.g. `["pg_ctlcluster", "15", "main", "stop", "-m", "immediate"]`.
    /// Use an immediate stop: a fast shutdown waits for the standbys to receive the last WAL,
    /// which an isolated host cannot send (it would hang for `wal_sender_timeout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolated_primary_stop_command: Option<Vec<String>>,
}

/// One peer to probe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSettings {
    /// The peer's node id (as it reports it).
    pub node_id: String,
    /// An address of the peer on the heartbeat network.
    pub address: IpAddr,
}

fn default_arbitration_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_arbitration_timeout() -> Duration {
    Duration::from_millis(500)
}

fn default_drbdsetup() -> PathBuf {
    PathBuf::from("drbdsetup")
}

fn serialize_redacted<S: serde::Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("")
}

fn serialize_redacted_opt<S: serde::Serializer>(
    value: &Option<SecretString>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str(""),
        None => s.serialize_none(),
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            server_url: vec!["http://127.0.0.1:8080".into()],
            log_format: Default::default(),
            node_id: String::new(),
            cluster: String::new(),
            enrollment_token: None,
            allow_insecure_http: false,
            heartbeat_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            max_retry_backoff: Duration::from_secs(30),
            state_dir: PathBuf::from("/var/lib/hapulse-agent"),
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            spool_capacity: 10_000,
            probe_timeout: Duration::from_secs(2),
            postgresql: Vec::new(),
            mysql: Vec::new(),
            drbd: Vec::new(),
            actions: ActionSettings::default(),
            arbitration: None,
            health: None,
            checks: Vec::new(),
            arp_check_interval: default_arp_check_interval(),
            pacemaker: None,
            keepalived: KeepalivedSettings {
                notify_fifo: PathBuf::from("/run/keepalived/hapulse.fifo"),
                pid_file: PathBuf::from("/run/keepalived.pid"),
                json_dump: PathBuf::from("/tmp/keepalived.json"),
                data_dump: None,
                binary: PathBuf::from("keepalived"),
                reconcile_interval: Duration::from_secs(5),
                dump_timeout: Duration::from_secs(1),
            },
        }
    }
}

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an environment variable did not parse or has a wrong type.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value parsed but is not acceptable.
    #[error("configuration key `{key}`: {reason}")]
    Invalid {
        /// The key at fault (`checks[1].timeout` for an entry of a list).
        key: String,
        /// Why it is refused.
        reason: String,
    },
}

impl Settings {
    /// Loads defaults, then `file` (when given; a missing file is an error), then the
    /// `HAPULSE_AGENT_*` environment, and validates the result.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    reason: format!("{} does not exist", path.display()),
                });
            }
            figment = figment.merge(Toml::file(path));
        }
        // HAPULSE_AGENT_CONFIG is the --config flag, not a key.
        figment = figment.merge(
            Env::prefixed("HAPULSE_AGENT_")
                .ignore(&["CONFIG"])
                .split("__"),
        );
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    /// The defaults as a commented TOML document (`--print-default-config`).
    pub fn default_toml() -> String {
        let body = toml::to_string(&Settings::default())
            .unwrap_or_else(|e| format!("# cannot render defaults: {e}\n"));
        format!(
            "# hapulse-agent configuration; every key can be overridden by HAPULSE_AGENT_<KEY>\n\
             # (nested keys: HAPULSE_AGENT_KEEPALIVED__PID_FILE). node_id and cluster are required; enrollment_token until the node is enrolled.\n{body}\n\
             # Replication probes, none by default. Examples:\n\
             # [[postgresql]]\n\
             # name = \"pg\"\n\
             # dsn = \"postgres:///postgres?host=/var/run/postgresql&user=postgres\"\n\
             # vrrp_instance = \"VI_1\"\n\
             #\n\
             # [[mysql]]\n\
             # name = \"db\"\n\
             # url = \"mysql://hapulse:PASSWORD@localhost/?socket=/run/mysqld/mysqld.sock\"\n\
             #\n\
             # [[drbd]]\n\
             # drbdsetup = \"drbdsetup\"\n\
             # resources = [\"r0\"]\n\
             #\n\
             # Arbitration for automatic failover, none by default. Example:\n\
             # [arbitration]\n\
             # reference_address = \"10.0.0.254\"   # the gateway\n\
             # interval = \"1s\"\n\
             # timeout = \"500ms\"\n\
             # self_fence_after = \"5s\"           # fence this host when it reaches nothing\n\
             # isolated_primary_stop_command = [\"pg_ctlcluster\", \"15\", \"main\", \"stop\", \"-m\", \"immediate\"]\n\
             # [[arbitration.peers]]\n\
             # node_id = \"db2\"\n\
             # address = \"10.0.0.12\"\n\
             #\n\
             # Health endpoints for HAProxy (Patroni's /primary, /replica?lag=, /read-only,\n\
             # /health, /liveness), off by default. Example:\n\
             # [health]\n\
             # listen = \"10.0.0.11:8008\"\n\
             #\n\
             # Service checks, none by default (kind tcp, http, icmp or exec). Examples:\n\
             # [[checks]]\n\
             # name = \"pg-port\"\n\
             # kind = \"tcp\"\n\
             # target = \"10.0.0.11:5432\"\n\
             # interval = \"2s\"\n\
             # timeout = \"1s\"\n\
             # rise = 2\n\
             # fall = 3\n\
             # vrrp_instance = \"VI_1\"\n\
             # link = \"postgresql:pg\"\n\
             # track_file = \"/run/hapulse/pg-port.track\"   # 0 passing, 1 failing\n\
             #\n\
             # [[checks]]\n\
             # name = \"web\"\n\
             # kind = \"http\"\n\
             # target = \"https://10.0.0.11/health\"\n\
             # expect_status = 200\n\
             # expect_body = \"ok\"\n\
             #\n\
             # [[checks]]\n\
             # name = \"gateway\"\n\
             # kind = \"icmp\"\n\
             # target = \"10.0.0.254\"\n\
             #\n\
             # [[checks]]\n\
             # name = \"replica-sane\"\n\
             # kind = \"exec\"\n\
             # command = [\"/usr/local/bin/check-replica\", \"--quiet\"]\n\
             #\n\
             # [pacemaker]   # hosts run by Pacemaker/Corosync, off by default\n\
             # crm_mon = \"crm_mon\"\n\
             # crm_resource = \"crm_resource\"\n\
             # legacy_xml = false   # true: crm_mon --as-xml (Pacemaker before 2.0.3)\n\
             # interval = \"2s\"\n\
             # timeout = \"5s\"\n"
        )
    }

    /// The TLS files of the server connection.
    pub fn client_tls(&self) -> crate::client::ClientTls {
        crate::client::ClientTls {
            ca_file: self.ca_file.clone(),
            client_cert_file: self.client_cert_file.clone(),
            client_key_file: self.client_key_file.clone(),
        }
    }

    /// Checks every key, in the order of the file: server and identity, keepalived, actions,
    /// probe names, arbitration, spool. The first key at fault is the error.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_server()?;
        self.keepalived.validate()?;
        self.actions.validate()?;
        self.validate_probe_names()?;
        if let Some(a) = &self.arbitration {
            a.validate(&self.node_id, &self.actions)?;
        }
        self.validate_checks()?;
        // A round waits up to 1 s per interface for replies; 0 turns the checks off.
        if !self.arp_check_interval.is_zero()
            && (self.arp_check_interval < Duration::from_secs(2)
                || self.arp_check_interval > Duration::from_secs(3600))
        {
            return invalid(
                "arp_check_interval",
                "must be 0s (no ARP checks) or between 2s and 1h",
            );
        }
        if let Some(p) = &self.pacemaker {
            p.validate()?;
        } else if self.actions.enabled.iter().any(|k| k == "pacemaker_move") {
            return invalid(
                "actions.enabled",
                "pacemaker_move needs a [pacemaker] section",
            );
        }
        if self.spool_capacity == 0 {
            return invalid("spool_capacity", "must be at least 1");
        }
        Ok(())
    }

    /// Every `[[checks]]` entry ([`CheckSettings::validate`]); names unique, and track files
    /// unique and none of them one the executor writes (`actions.track_files`).
    fn validate_checks(&self) -> Result<(), ConfigError> {
        // The server refuses a whole report beyond these (and a node whose reports are refused
        // looks dead to it): refused here, at start, instead.
        if self.checks.len() > hapulse_protocol::MAX_SERVICE_CHECKS {
            return invalid(
                "checks",
                &format!("at most {} checks", hapulse_protocol::MAX_SERVICE_CHECKS),
            );
        }
        for (i, check) in self.checks.iter().enumerate() {
            let target = check
                .target
                .as_deref()
                .or(check.command.first().map(String::as_str))
                .unwrap_or_default();
            if target.len() > hapulse_protocol::MAX_CHECK_TEXT_BYTES
                || target.chars().any(char::is_control)
            {
                return invalid(
                    &format!("checks[{i}].target"),
                    &format!(
                        "at most {} bytes, no control characters",
                        hapulse_protocol::MAX_CHECK_TEXT_BYTES
                    ),
                );
            }
        }
        let mut names = std::collections::BTreeSet::new();
        let mut files: std::collections::BTreeSet<&Path> = self
            .actions
            .track_files
            .iter()
            .flat_map(|t| [t.priority_file.as_path(), t.fence_file.as_path()])
            .collect();
        for (i, check) in self.checks.iter().enumerate() {
            check.validate(i)?;
            if !names.insert(&check.name) {
                return invalid(
                    &format!("checks[{i}].name"),
                    &format!("{:?} is the name of an earlier check", check.name),
                );
            }
            if let Some(file) = &check.track_file {
                if !files.insert(file) {
                    return invalid(
                        &format!("checks[{i}].track_file"),
                        "already written by another check or by actions.track_files",
                    );
                }
            }
        }
        Ok(())
    }

    /// This node's identity, the server's URL and TLS files, and the heartbeat timing.
    fn validate_server(&self) -> Result<(), ConfigError> {
        if !valid_name(&self.node_id) {
            return invalid("node_id", "required; 1-64 characters of A-Z a-z 0-9 . _ -");
        }
        if !valid_name(&self.cluster) {
            return invalid("cluster", "required; 1-64 characters of A-Z a-z 0-9 . _ -");
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            return invalid(
                "client_cert_file",
                "needs client_key_file, and the other way round",
            );
        }
        if self.server_url.is_empty() {
            return invalid("server_url", "needs at least one URL");
        }
        for url in &self.server_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return invalid("server_url", "must start with http:// or https://");
            }
            if url.starts_with("http://") && !self.allow_insecure_http && !loopback_url(url) {
                return invalid(
                    "server_url",
                    "plain http:// to a server not on loopback sends the node credential in clear: use https://, or set allow_insecure_http = true on a network you trust",
                );
            }
        }
        // The server accepts heartbeat intervals of 100 ms to 1 h.
        if self.heartbeat_interval < Duration::from_millis(100)
            || self.heartbeat_interval > Duration::from_secs(3600)
        {
            return invalid("heartbeat_interval", "must be between 100ms and 1h");
        }
        if self.request_timeout < Duration::from_millis(100) {
            return invalid("request_timeout", "must be at least 100ms");
        }
        if self.max_retry_backoff < self.heartbeat_interval {
            return invalid("max_retry_backoff", "must be at least heartbeat_interval");
        }
        Ok(())
    }

    /// PostgreSQL and MySQL link names: valid and unique across both.
    fn validate_probe_names(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::BTreeSet::new();
        for name in self
            .postgresql
            .iter()
            .map(|p| &p.name)
            .chain(self.mysql.iter().map(|m| &m.name))
        {
            if !valid_name(name) || !names.insert(name) {
                return invalid(
                    "postgresql/mysql name",
                    "1-64 characters of A-Z a-z 0-9 . _ -, unique",
                );
            }
        }
        for (key, address) in self
            .postgresql
            .iter()
            .map(|p| ("postgresql.advertise_address", &p.advertise_address))
            .chain(
                self.mysql
                    .iter()
                    .map(|m| ("mysql.advertise_address", &m.advertise_address)),
            )
        {
            if let Some(bad) = address
                .as_deref()
                .and_then(|a| hapulse_protocol::parse_host_port(a).err())
            {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    reason: bad,
                });
            }
        }
        Ok(())
    }
}

/// Whether `url` names a loopback host (`127.0.0.0/8`, `::1`, `localhost`).
/// `server_url` as one URL, several separated by commas (the environment), or a list.
fn one_or_more_urls<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMore {
        One(String),
        More(Vec<String>),
    }
    let urls = match OneOrMore::deserialize(d)? {
        OneOrMore::One(text) => text
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect(),
        OneOrMore::More(urls) => urls,
    };
    Ok(urls)
}

fn loopback_url(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    else {
        return false;
    };
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The action kinds `actions.enabled` may list (as [`hapulse_protocol::Action::kind`] names them).
const ACTION_KINDS: [&str; 14] = [
    "set_priority_offset",
    "fence",
    "postgres_stop",
    "postgres_promote",
    "postgres_follow",
    "postgres_start",
    "mysql_stop",
    "mysql_catch_up",
    "mysql_promote",
    "mysql_follow",
    "drbd_role",
    "hook",
    "remove_vip",
    "pacemaker_move",
];

/// Checks an operator's `standby_conninfo`: `keyword=value` pairs with plain values (no quotes,
/// no backslashes, no control characters), no `host`, `hostaddr` or `port` (the command names
/// the primary) and no `password` (a passfile keeps it out of `postgresql.auto.conf`). Err says
/// what is wrong, without the value.
pub fn check_standby_conninfo(conninfo: &str) -> Result<(), String> {
    for pair in conninfo.split_whitespace() {
        let Some((key, value)) = pair.split_once('=') else {
            return Err("every part must be keyword=value".into());
        };
        if key == "password" {
            return Err(
                "keep the password in a passfile (passfile=…): this string is written to postgresql.auto.conf"
                    .into(),
            );
        }
        if matches!(key, "host" | "hostaddr" | "port") {
            return Err(format!(
                "{key} is set by the server's command (the new primary's advertised address); leave it out"
            ));
        }
        if key.is_empty()
            || value.is_empty()
            || pair
                .chars()
                .any(|c| c == '\'' || c == '\\' || c.is_control())
        {
            return Err(format!(
                "{key:?}: plain keyword=value pairs only (no quotes or backslashes)"
            ));
        }
    }
    Ok(())
}

/// A refusal of `key` with a fixed reason.
fn invalid(key: &str, reason: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Invalid {
        key: key.to_string(),
        reason: reason.to_string(),
    })
}

impl CheckSettings {
    /// The rules of one entry, `i` its index in `[[checks]]` (for the key in the error): a
    /// valid name; the target its kind needs (or the command, for exec) and nothing meant for
    /// another kind; timing within bounds; a well-formed tie.
    fn validate(&self, i: usize) -> Result<(), ConfigError> {
        let refuse = |key: &str, reason: &str| invalid(&format!("checks[{i}].{key}"), reason);
        if !valid_name(&self.name) {
            return refuse("name", "1-64 characters of A-Z a-z 0-9 . _ -");
        }
        match (self.kind, self.target.as_deref()) {
            (ServiceCheckKind::Exec, Some(_)) => {
                return refuse("target", "exec checks name their program in `command`");
            }
            (ServiceCheckKind::Exec, None) => {
                if self.command.first().is_none_or(|p| p.is_empty()) {
                    return refuse("command", "must name a program: [\"prog\", \"arg\"]");
                }
            }
            (_, None) => return refuse("target", "required for tcp, http and icmp checks"),
            (kind, Some(target)) => {
                if !self.command.is_empty() {
                    return refuse("command", "only for exec checks");
                }
                if let Err(reason) = check_target(kind, target) {
                    return refuse("target", &reason);
                }
            }
        }
        if self.kind != ServiceCheckKind::Http {
            if self.expect_body.is_some() {
                return refuse("expect_body", "only for http checks");
            }
            if self.expect_status != default_expect_status() {
                return refuse("expect_status", "only for http checks");
            }
        }
        if !(100..=599).contains(&self.expect_status) {
            return refuse("expect_status", "must be an HTTP status, 100-599");
        }
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(3600) {
            return refuse("interval", "must be between 100ms and 1h");
        }
        if self.timeout < Duration::from_millis(10) {
            return refuse("timeout", "must be at least 10ms");
        }
        if self.timeout >= self.interval {
            return refuse("timeout", "must be below interval");
        }
        if !(1..=1000).contains(&self.rise) {
            return refuse("rise", "must be between 1 and 1000");
        }
        if !(1..=1000).contains(&self.fall) {
            return refuse("fall", "must be between 1 and 1000");
        }
        if self
            .vrrp_instance
            .as_deref()
            .is_some_and(|v| !valid_name(v))
        {
            return refuse("vrrp_instance", "1-64 characters of A-Z a-z 0-9 . _ -");
        }
        if let Some(link) = &self.link {
            let ok = link.split_once(':').is_some_and(|(kind, name)| {
                matches!(kind, "postgresql" | "mysql" | "drbd") && valid_name(name)
            });
            if !ok {
                return refuse(
                    "link",
                    "kind:name, the kind postgresql, mysql or drbd (postgresql:pg)",
                );
            }
        }
        Ok(())
    }
}

/// Whether `target` suits a check of `kind` (not exec): `HOST:PORT` for tcp, an `http://` or
/// `https://` URL with a host for http, an IP address for icmp. Err says what is wrong.
fn check_target(kind: ServiceCheckKind, target: &str) -> Result<(), String> {
    match kind {
        ServiceCheckKind::Tcp => hapulse_protocol::parse_host_port(target).map(|_| ()),
        ServiceCheckKind::Http => {
            let url = reqwest::Url::parse(target).map_err(|e| format!("not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
                return Err("must be an http:// or https:// URL with a host".into());
            }
            Ok(())
        }
        ServiceCheckKind::Icmp => target
            .parse::<IpAddr>()
            .map(|_| ())
            .map_err(|_| format!("{target:?} is not an IP address")),
        ServiceCheckKind::Exec => Ok(()),
    }
}

impl KeepalivedSettings {
    /// `data_dump`, or `keepalived.data` in `json_dump`'s directory.
    pub fn data_dump_path(&self) -> PathBuf {
        self.data_dump.clone().unwrap_or_else(|| {
            self.json_dump
                .parent()
                .unwrap_or(std::path::Path::new("/tmp"))
                .join("keepalived.data")
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.reconcile_interval < Duration::from_millis(100) {
            return invalid("keepalived.reconcile_interval", "must be at least 100ms");
        }
        if self.dump_timeout < Duration::from_millis(10) {
            return invalid("keepalived.dump_timeout", "must be at least 10ms");
        }
        Ok(())
    }
}

impl ActionSettings {
    /// Known kinds, a timeout of at least 1 s, one pair of distinct track files per instance,
    /// and a program in every stop command.
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(unknown) = self
            .enabled
            .iter()
            .find(|k| !ACTION_KINDS.contains(&k.as_str()))
        {
            return Err(ConfigError::Invalid {
                key: "actions.enabled".into(),
                reason: format!(
                    "unknown action {unknown:?}; known: {}",
                    ACTION_KINDS.join(", ")
                ),
            });
        }
        if self.timeout < Duration::from_secs(1) {
            return invalid("actions.timeout", "must be at least 1s");
        }
        let mut instances = std::collections::BTreeSet::new();
        for t in &self.track_files {
            if t.priority_file == t.fence_file || !instances.insert(&t.instance) {
                return invalid(
                    "actions.track_files",
                    "one entry per instance, with two different files",
                );
            }
        }
        if self.postgres.iter().any(|p| p.stop_command.is_empty()) {
            return invalid("actions.postgres.stop_command", "must name a program");
        }
        if let Some(bad) = self.postgres.iter().find_map(|p| {
            p.standby_conninfo
                .as_deref()
                .and_then(|c| check_standby_conninfo(c).err())
        }) {
            return Err(ConfigError::Invalid {
                key: "actions.postgres.standby_conninfo".into(),
                reason: bad,
            });
        }
        if self.mysql.iter().any(|m| !valid_name(&m.replication_user)) {
            return invalid(
                "actions.mysql.replication_user",
                "1-64 characters of A-Z a-z 0-9 . _ -",
            );
        }
        Ok(())
    }
}

impl ArbitrationSettings {
    /// Probe timing, peers that are other nodes, and self-fencing that has fence files to write
    /// (`actions`) and a program in its stop command. `node_id` is this node's.
    fn validate(&self, node_id: &str, actions: &ActionSettings) -> Result<(), ConfigError> {
        if self.interval < Duration::from_millis(100) || self.interval > Duration::from_secs(60) {
            return invalid("arbitration.interval", "must be between 100ms and 60s");
        }
        if self.timeout < Duration::from_millis(10) || self.timeout >= self.interval {
            return invalid(
                "arbitration.timeout",
                "must be at least 10ms and below arbitration.interval",
            );
        }
        if let Some(p) = self
            .peers
            .iter()
            .find(|p| !valid_name(&p.node_id) || p.node_id == node_id)
        {
            return Err(ConfigError::Invalid {
                key: "arbitration.peers".into(),
                reason: format!(
                    "{:?}: a peer is another node's id (1-64 characters of A-Z a-z 0-9 . _ -)",
                    p.node_id
                ),
            });
        }
        if let Some(after) = self.self_fence_after {
            if after < self.interval * 2 {
                return invalid(
                    "arbitration.self_fence_after",
                    "must be at least two probe intervals",
                );
            }
            if actions.track_files.is_empty() {
                return invalid(
                    "arbitration.self_fence_after",
                    "self-fencing needs actions.track_files (the fence file of each instance)",
                );
            }
        }
        if self
            .isolated_primary_stop_command
            .as_ref()
            .is_some_and(|c| c.is_empty())
        {
            return invalid(
                "arbitration.isolated_primary_stop_command",
                "must name a program",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_conninfo_names_no_address_and_needs_no_quoting() {
        assert!(check_standby_conninfo("user=r application_name=h1").is_ok());
        assert!(check_standby_conninfo("").is_ok());
        for bad in [
            "host=10.0.0.1",
            "user=r port=5432",
            "hostaddr=1.2.3.4",
            "password='x y'",
            "user=r password=secret",
            "user",
            "user=a\\b",
            "=x",
        ] {
            assert!(check_standby_conninfo(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn default_config_round_trips_and_hides_the_token() {
        let text = Settings::default_toml();
        assert!(text.contains("heartbeat_interval = \"1s\""), "{text}");
        assert!(text.contains("[keepalived]"), "{text}");
        let parsed: Settings = toml::from_str(&text).unwrap();
        assert!(parsed.postgresql.is_empty());
        let with_probe: Settings = toml::from_str(
            &text
                .replace("# [[postgresql]]\n# name", "[[postgresql]]\nname")
                .replace("# dsn", "dsn")
                .replacen("# vrrp_instance", "vrrp_instance", 1),
        )
        .unwrap();
        assert_eq!(
            with_probe.postgresql[0].vrrp_instance.as_deref(),
            Some("VI_1")
        );
        assert!(
            !format!("{with_probe:?}").contains("/var/run/postgresql"),
            "the DSN is secret"
        );
        assert_eq!(parsed.heartbeat_interval, Duration::from_secs(1));
        assert!(parsed.checks.is_empty());
        // Every commented check example parses and validates once uncommented.
        let checks_at = text.find("# [[checks]]").unwrap();
        let uncommented = text[checks_at..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        let with_checks: Settings =
            toml::from_str(&format!("{}\n{uncommented}", &text[..checks_at])).unwrap();
        let kinds: Vec<_> = with_checks.checks.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [
                ServiceCheckKind::Tcp,
                ServiceCheckKind::Http,
                ServiceCheckKind::Icmp,
                ServiceCheckKind::Exec
            ]
        );
        let pcmk = with_checks.pacemaker.as_ref().unwrap();
        assert_eq!(pcmk.crm_mon, PathBuf::from("crm_mon"));
        assert_eq!(pcmk.interval, Duration::from_secs(2));
        assert!(!pcmk.legacy_xml);
        let pg = &with_checks.checks[0];
        assert_eq!(pg.link.as_deref(), Some("postgresql:pg"));
        assert_eq!((pg.rise, pg.fall), (2, 3));
        assert_eq!(with_checks.checks[3].expect_status, 200, "the default");
        assert_eq!(with_checks.checks[3].interval, Duration::from_secs(2));
        assert_eq!(with_checks.checks[3].timeout, Duration::from_secs(1));
        Settings {
            node_id: "db1".into(),
            cluster: "pg".into(),
            ..with_checks.clone()
        }
        .validate()
        .unwrap();
        // And they serialize back to what they were.
        let again: Settings = toml::from_str(&toml::to_string(&with_checks).unwrap()).unwrap();
        assert_eq!(again.checks.len(), 4);
        assert_eq!(
            again.checks[3].command,
            ["/usr/local/bin/check-replica", "--quiet"]
        );
        let s = Settings {
            enrollment_token: Some(SecretString::from("hunter2")),
            ..Settings::default()
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn each_rule_names_its_key() {
        let valid = Settings {
            node_id: "db1".into(),
            cluster: "pg".into(),
            ..Settings::default()
        };
        valid.validate().unwrap();
        let key_at_fault = |change: &dyn Fn(&mut Settings)| {
            let mut s = valid.clone();
            change(&mut s);
            match s.validate() {
                Err(ConfigError::Invalid { key, .. }) => key,
                other => panic!("expected a refusal, got {other:?}"),
            }
        };
        let arbitration = ArbitrationSettings {
            reference_address: "192.0.2.1".parse().unwrap(),
            peers: vec![],
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            self_fence_after: None,
            isolated_primary_stop_command: None,
        };
        assert_eq!(
            key_at_fault(&|s| s.client_key_file = Some("/k".into())),
            "client_cert_file"
        );
        let pacemaker = PacemakerSettings {
            crm_mon: default_crm_mon(),
            crm_resource: default_crm_resource(),
            legacy_xml: false,
            interval: Duration::from_millis(100),
            timeout: Duration::from_secs(1),
        };
        assert_eq!(
            key_at_fault(&|s| s.pacemaker = Some(pacemaker.clone())),
            "pacemaker.interval"
        );
        assert_eq!(
            key_at_fault(&|s| s.actions.enabled = vec!["pacemaker_move".into()]),
            "actions.enabled"
        );
        assert_eq!(
            key_at_fault(&|s| s.server_url = vec!["ftp://x".into()]),
            "server_url"
        );
        // Plain HTTP crosses the network in clear: only to loopback, or when allowed.
        assert_eq!(
            key_at_fault(&|s| s.server_url = vec!["http://10.0.0.1:8080".into()]),
            "server_url"
        );
        // Every replica's URL is checked, and there is at least one.
        assert_eq!(
            key_at_fault(
                &|s| s.server_url = vec!["https://10.0.0.1".into(), "http://10.0.0.2:8080".into()]
            ),
            "server_url"
        );
        assert_eq!(key_at_fault(&|s| s.server_url = vec![]), "server_url");
        for ok in [
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://localhost",
            "https://10.0.0.1",
        ] {
            let s = Settings {
                server_url: vec![ok.into()],
                ..valid.clone()
            };
            assert!(s.validate().is_ok(), "{ok}");
        }
        let allowed = Settings {
            server_url: vec!["http://10.0.0.1:8080".into()],
            allow_insecure_http: true,
            ..valid.clone()
        };
        assert!(allowed.validate().is_ok());
        assert_eq!(
            key_at_fault(&|s| s.keepalived.dump_timeout = Duration::ZERO),
            "keepalived.dump_timeout"
        );
        assert_eq!(
            key_at_fault(&|s| s.actions.enabled = vec!["reboot".into()]),
            "actions.enabled"
        );
        assert_eq!(
            key_at_fault(&|s| s.actions.postgres = vec![PostgresActionSettings {
                link: "pg".into(),
                stop_command: vec![],
                data_directory: None,
                pg_controldata: None,
                start_command: vec![],
                rewind_command: vec![],
                reclone_command: vec![],
                standby_conninfo: None,
            }]),
            "actions.postgres.stop_command"
        );
        assert_eq!(
            key_at_fault(&|s| s.actions.postgres = vec![PostgresActionSettings {
                link: "pg".into(),
                stop_command: vec!["pg_ctl".into()],
                data_directory: None,
                pg_controldata: None,
                start_command: vec![],
                rewind_command: vec![],
                reclone_command: vec![],
                standby_conninfo: Some("host=10.0.0.1 user=r".into()),
            }]),
            "actions.postgres.standby_conninfo"
        );
        assert_eq!(
            key_at_fault(&|s| s.mysql = vec![MysqlSettings {
                name: "bad name".into(),
                url: "mysql://u@localhost/".to_string().into(),
                vrrp_instance: None,
                advertise_address: None,
            }]),
            "postgresql/mysql name"
        );
        assert_eq!(
            key_at_fault(&|s| s.postgresql = vec![PostgresSettings {
                name: "pg".into(),
                dsn: SecretString::from("postgres:///postgres"),
                vrrp_instance: None,
                advertise_address: Some("10.0.0.11".into()),
            }]),
            "postgresql.advertise_address"
        );
        assert_eq!(
            key_at_fault(&|s| s.arbitration = Some(ArbitrationSettings {
                peers: vec![PeerSettings {
                    node_id: "db1".into(),
                    address: "192.0.2.2".parse().unwrap(),
                }],
                ..arbitration.clone()
            })),
            "arbitration.peers"
        );
        assert_eq!(
            key_at_fault(&|s| s.arbitration = Some(ArbitrationSettings {
                self_fence_after: Some(Duration::from_secs(5)),
                ..arbitration.clone()
            })),
            "arbitration.self_fence_after",
            "self-fencing without track files"
        );
        assert_eq!(key_at_fault(&|s| s.spool_capacity = 0), "spool_capacity");
        for bad in [Duration::from_secs(1), Duration::from_secs(7200)] {
            assert_eq!(
                key_at_fault(&|s| s.arp_check_interval = bad),
                "arp_check_interval"
            );
        }
    }

    #[test]
    fn each_check_rule_names_the_entry_and_key() {
        let tcp = CheckSettings {
            name: "pg-port".into(),
            kind: ServiceCheckKind::Tcp,
            target: Some("127.0.0.1:5432".into()),
            command: vec![],
            expect_status: 200,
            expect_body: None,
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            vrrp_instance: Some("VI_1".into()),
            link: Some("postgresql:pg".into()),
            track_file: None,
        };
        let valid = Settings {
            node_id: "db1".into(),
            cluster: "pg".into(),
            checks: vec![tcp.clone()],
            ..Settings::default()
        };
        valid.validate().unwrap();
        // The second entry is at fault, with a message naming it.
        let refusal = |change: &dyn Fn(&mut CheckSettings)| {
            let mut second = CheckSettings {
                name: "second".into(),
                ..tcp.clone()
            };
            change(&mut second);
            let s = Settings {
                checks: vec![tcp.clone(), second],
                ..valid.clone()
            };
            match s.validate() {
                Err(e @ ConfigError::Invalid { .. }) => {
                    let ConfigError::Invalid { ref key, .. } = e else {
                        unreachable!()
                    };
                    (key.clone(), e.to_string())
                }
                other => panic!("expected a refusal, got {other:?}"),
            }
        };
        // What the server would refuse in a report is refused here (a node whose reports are
        // refused looks dead to the server).
        let long = format!(
            "{}:5432",
            "h".repeat(hapulse_protocol::MAX_CHECK_TEXT_BYTES)
        );
        assert_eq!(
            refusal(&|c| c.target = Some(long.clone())).0,
            "checks[1].target"
        );
        assert_eq!(
            refusal(&|c| c.target = Some("127.0.0.1:5432\u{1b}".into())).0,
            "checks[1].target"
        );
        let too_many = Settings {
            checks: (0..=hapulse_protocol::MAX_SERVICE_CHECKS)
                .map(|i| CheckSettings {
                    name: format!("c{i}"),
                    ..tcp.clone()
                })
                .collect(),
            ..valid.clone()
        };
        assert!(matches!(
            too_many.validate(),
            Err(ConfigError::Invalid { ref key, .. }) if key == "checks"
        ));
        let (key, message) = refusal(&|c| c.timeout = Duration::from_secs(2));
        assert_eq!(key, "checks[1].timeout");
        assert!(message.contains("must be below interval"), "{message}");
        assert_eq!(refusal(&|c| c.name = "pg-port".into()).0, "checks[1].name");
        assert_eq!(refusal(&|c| c.name = "a b".into()).0, "checks[1].name");
        assert_eq!(refusal(&|c| c.target = None).0, "checks[1].target");
        assert_eq!(
            refusal(&|c| c.target = Some("127.0.0.1".into())).0,
            "checks[1].target",
            "tcp needs a port"
        );
        assert_eq!(
            refusal(&|c| c.expect_body = Some("ok".into())).0,
            "checks[1].expect_body"
        );
        assert_eq!(
            refusal(&|c| c.expect_status = 204).0,
            "checks[1].expect_status"
        );
        assert_eq!(
            refusal(&|c| c.interval = Duration::from_millis(50)).0,
            "checks[1].interval"
        );
        assert_eq!(refusal(&|c| c.rise = 0).0, "checks[1].rise");
        assert_eq!(refusal(&|c| c.fall = 0).0, "checks[1].fall");
        assert_eq!(refusal(&|c| c.link = Some("pg".into())).0, "checks[1].link");
        assert_eq!(
            refusal(&|c| c.link = Some("redis:pg".into())).0,
            "checks[1].link"
        );
        assert_eq!(
            refusal(&|c| c.vrrp_instance = Some("VI 1".into())).0,
            "checks[1].vrrp_instance"
        );
        let http = |c: &mut CheckSettings| {
            c.kind = ServiceCheckKind::Http;
            c.target = Some("https://user:pw@127.0.0.1/health?token=x".into());
        };
        let mut ok = tcp.clone();
        http(&mut ok);
        ok.expect_status = 204;
        ok.expect_body = Some("ok".into());
        ok.validate(0).unwrap();
        assert_eq!(
            refusal(&|c| {
                http(c);
                c.target = Some("ftp://127.0.0.1/".into());
            })
            .0,
            "checks[1].target"
        );
        assert_eq!(
            refusal(&|c| {
                http(c);
                c.expect_status = 42;
            })
            .0,
            "checks[1].expect_status"
        );
        assert_eq!(
            refusal(&|c| {
                c.kind = ServiceCheckKind::Icmp;
                c.target = Some("localhost".into());
            })
            .0,
            "checks[1].target"
        );
        let exec = |c: &mut CheckSettings| {
            c.kind = ServiceCheckKind::Exec;
            c.target = None;
            c.command = vec!["true".into()];
        };
        let mut ok = tcp.clone();
        exec(&mut ok);
        ok.validate(0).unwrap();
        assert_eq!(
            refusal(&|c| {
                exec(c);
                c.command = vec![];
            })
            .0,
            "checks[1].command"
        );
        assert_eq!(
            refusal(&|c| {
                exec(c);
                c.target = Some("127.0.0.1:1".into());
            })
            .0,
            "checks[1].target"
        );
        assert_eq!(
            refusal(&|c| c.command = vec!["true".into()]).0,
            "checks[1].command",
            "a command on a tcp check"
        );
        // A track file is written by one writer only.
        let mut first = tcp.clone();
        first.track_file = Some("/run/t".into());
        let s = Settings {
            checks: vec![
                first.clone(),
                CheckSettings {
                    name: "second".into(),
                    ..first
                },
            ],
            ..valid.clone()
        };
        assert!(
            matches!(s.validate(), Err(ConfigError::Invalid { key, .. }) if key == "checks[1].track_file")
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API
    fn file_then_environment_and_validation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "node_id = \"db1\"\ncluster = \"pg\"\nheartbeat_interval = \"250ms\"\n",
        )
        .unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("HAPULSE_AGENT_KEEPALIVED__PID_FILE", "/run/k.pid");
            jail.set_env("HAPULSE_AGENT_CONFIG", "/ignored/here");
            let s = Settings::load(Some(&path)).unwrap();
            assert_eq!(s.node_id, "db1");
            assert_eq!(s.heartbeat_interval, Duration::from_millis(250));
            assert_eq!(s.keepalived.pid_file, PathBuf::from("/run/k.pid"));
            assert_eq!(s.server_url, ["http://127.0.0.1:8080"]);
            // Several replicas: a list in the file, commas in the environment.
            jail.set_env(
                "HAPULSE_AGENT_SERVER_URL",
                "http://127.0.0.1:8080, http://127.0.0.2:8080/",
            );
            let s = Settings::load(Some(&path)).unwrap();
            assert_eq!(
                s.server_url,
                ["http://127.0.0.1:8080", "http://127.0.0.2:8080/"]
            );
            jail.set_env("HAPULSE_AGENT_KEEPALIVED__RECONCILE_INTERVAL", "0s");
            let err = Settings::load(Some(&path)).unwrap_err().to_string();
            assert!(err.contains("reconcile_interval"), "{err}");
            jail.set_env("HAPULSE_AGENT_KEEPALIVED__RECONCILE_INTERVAL", "5s");
            jail.set_env("HAPULSE_AGENT_NODE_ID", "bad id!");
            let err = Settings::load(Some(&path)).unwrap_err().to_string();
            assert!(err.contains("node_id"), "{err}");
            Ok(())
        });
        let err = Settings::load(Some(&dir.path().join("missing.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
