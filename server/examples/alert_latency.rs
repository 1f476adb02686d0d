//! Takeover → alert email latency on the lab, for docs/benchmarks.md (a measurement, not a
//! test).
//!
//! ```text
//! sudo scripts/setup && source /var/lib/hapulse/dev.env
//! cargo build --release --workspace
//! sudo -E cargo run --release -p hapulse-server --example alert_latency [ROUNDS]
//! ```
//!
//! Starts a real SMTP server (mailin-embedded) on 127.0.0.1, then a two-host lab (`hpalbench`,
//! 10.213.9.0/24) whose release server mails every alert there, with the default alert settings
//! (rules evaluated every second, no pending duration for `failover`). ROUNDS times (default 5):
//! SIGKILLs the master's keepalived (h1), records when the kernel of h2 gets the VIP (the
//! takeover, seen by `ip monitor address` in h2's namespace) and when the SMTP server has
//! accepted the mail announcing that h2 took over; then restarts h1's keepalived and waits for
//! its mail too, at a random phase of the server's evaluation tick. Prints every sample and the
//! median.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::{median, Lab};

const LAB: &str = "hpalbench";
const NET: &str = "10.213.9";
const PORT: u16 = 18089;

/// Every accepted mail with the instant the SMTP server accepted it.
#[derive(Clone, Default)]
struct Mailbox {
    current: Arc<Mutex<String>>,
    received: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl mailin_embedded::Handler for Mailbox {
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if let Ok(mut current) = self.current.lock() {
            current.push_str(&String::from_utf8_lossy(buf));
        }
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        let mail = self
            .current
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default();
        if let Ok(mut received) = self.received.lock() {
            received.push((Instant::now(), mail));
        }
        mailin_embedded::response::OK
    }
}

impl Mailbox {
    /// The first mail accepted after `after` that contains `needle`, waiting up to `limit`.
    async fn wait(&self, after: Instant, needle: &str, limit: Duration) -> Result<Instant, String> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self.received.lock().ok().and_then(|r| {
                r.iter()
                    .find(|(at, mail)| *at >= after && mail.contains(needle))
                    .map(|(at, _)| *at)
            });
            if let Some(at) = found {
                return Ok(at);
            }
            if Instant::now() > deadline {
                return Err(format!("no mail with {needle:?} within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5)
        .max(1);
    let smtp = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("SMTP listener: {e}"))?;
    let smtp_port = smtp.local_addr().map_err(|e| e.to_string())?.port();
    let mailbox = Mailbox::default();
    let handler = mailbox.clone();
    std::thread::spawn(move || {
        let mut server = mailin_embedded::Server::new(handler);
        server.with_name("smtp.bench").with_tcp_listener(smtp);
        let _ = server.serve();
    });
    let config = std::env::temp_dir().join(format!("hapulse-{LAB}.toml"));
    std::fs::write(
        &config,
        format!(
            "[alerts]\ndashboard_url = \"http://{NET}.1:{PORT}\"\n\
             [[alerts.email]]\nname = \"bench\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {smtp_port}\n\
             security = \"none\"\nfrom = \"hapulse <hapulse@example.com>\"\nto = [\"oncall@example.com\"]\n"
        ),
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    let config_path = config.display().to_string();
    let env = [("HAPULSE_CONFIG", config_path.as_str())];
    // Taken down when `lab` is dropped, also on an early error return.
    let lab = Lab {
        name: LAB,
        net: NET,
        port: PORT,
    };
    lab.run(&["down"])?;
    lab.run_with(&["up", "2"], &env)?;
    tokio::time::sleep(Duration::from_secs(5)).await; // h1 elected, the server's baseline set
    let mut takeover_to_mail = Vec::new();
    for round in 1..=rounds {
        let (mut monitor, vip_seen) = lab.watch_vip("h2")?;
        tokio::time::sleep(Duration::from_millis(200)).await; // monitor subscribed
        let killed = Instant::now();
        lab.run(&["keepalived", "h1", "kill"])?;
        let takeover = vip_seen
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "VIP never appeared on h2")?;
        let _ = monitor.kill();
        let _ = monitor.wait();
        let mail = mailbox
            .wait(killed, "h2 took over from h1", Duration::from_secs(20))
            .await?;
        let ms = mail.saturating_duration_since(takeover).as_secs_f64() * 1000.0;
        takeover_to_mail.push(ms);
        println!(
            "round {round}: SIGKILL→takeover {:.0} ms, takeover→failover mail accepted {ms:.0} ms",
            takeover.duration_since(killed).as_secs_f64() * 1000.0
        );
        // h1's keepalived restarts at a random phase of the server's 1 s evaluation tick. The
        // takeover comes 3 advert intervals after h1's last advert, so its phase against the
        // tick is the phase of h1's start; without this, every round would restart h1 a fixed
        // time after a mail, that is after a tick, and measure the same point of the tick.
        let phase = (uuid::Uuid::new_v4().as_u128() % 1000) as u64;
        tokio::time::sleep(Duration::from_millis(phase)).await;
        let restarted = Instant::now();
        lab.run(&["keepalived", "h1", "start"])?;
        mailbox
            .wait(restarted, "h1 took over from h2", Duration::from_secs(30))
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await; // adverts settle
    }
    println!(
        "median of {rounds}: takeover→failover mail accepted {:.0} ms",
        median(&mut takeover_to_mail)
    );
    let _ = std::fs::remove_file(&config);
    Ok(())
}
