//! Each command: its calls of the REST API and what it prints.

use std::io::{BufRead, Write};
use std::time::Duration;

use clap::CommandFactory;
use serde_json::Value;

use crate::api::Api;
use crate::args::{Cli, Command, FailoverAction, NodesAction, Output, SilenceAction};
use crate::exit;
use crate::table::{render, terminal_width};

/// Runs `cli`; the exit code, or an error (an [`crate::api::ApiFailure`] for the server's).
pub async fn dispatch(
    cli: Cli,
    out: &mut (dyn Write + Send),
    input: &mut (dyn BufRead + Send),
) -> anyhow::Result<i32> {
    match cli.command {
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(shell, &mut command, "hapulse", out);
            return Ok(exit::OK);
        }
        Command::Man => {
            clap_mangen::Man::new(Cli::command()).render(out)?;
            return Ok(exit::OK);
        }
        _ => {}
    }
    let api = Api::new(cli.server, cli.token, cli.config.as_deref())?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Status { cluster, watch } => status(&api, cluster, watch, json, out).await,
        Command::Switchover {
            cluster,
            to,
            instance,
            reason,
            at,
            dry_run,
            yes,
        } => {
            let request = SwitchoverArgs {
                cluster,
                to,
                instance,
                reason,
                at,
                dry_run,
                yes,
            };
            switchover(&api, request, json, out, input).await
        }
        command @ (Command::Pause { .. } | Command::Resume { .. } | Command::Nodes { .. }) => {
            one_call(&api, command, json, out).await
        }
        Command::Events {
            cluster,
            since,
            limit,
            follow,
        } => {
            events(
                &api,
                EventArgs {
                    cluster,
                    since,
                    limit,
                    follow,
                },
                json,
                out,
            )
            .await
        }
        Command::Alerts => alerts(&api, json, out).await,
        Command::Silence { action } => silence(&api, action, json, out).await,
        Command::Failover { action } => failover(&api, action, json, out).await,
        Command::History {
            node,
            metric,
            link,
            check,
            since,
        } => {
            let of = [("link", link), ("check", check)];
            history(&api, &node, &metric, of, since, json, out).await
        }
        Command::Completions { .. } | Command::Man => Ok(exit::OK),
    }
}

/// The commands that are one call of the API: pause, resume, unfence.
async fn one_call(
    api: &Api,
    command: Command,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<i32> {
    let reason = |reason: String| serde_json::json!({ "reason": reason });
    let (method, path, body, done) = match command {
        Command::Pause {
            cluster,
            reason: why,
        } => (
            reqwest::Method::PUT,
            format!("/api/v1/clusters/{}/pause", segment(&cluster)),
            reason(why),
            format!("{cluster} paused: no automatic action until `hapulse resume {cluster}`"),
        ),
        Command::Resume { cluster } => (
            reqwest::Method::DELETE,
            format!("/api/v1/clusters/{}/pause", segment(&cluster)),
            Value::Null,
            format!("{cluster} resumed"),
        ),
        Command::Nodes {
            action:
                NodesAction::Unfence {
                    cluster,
                    node,
                    reason: why,
                },
        } => (
            reqwest::Method::POST,
            format!(
                "/api/v1/clusters/{}/nodes/{}/unfence",
                segment(&cluster),
                segment(&node)
            ),
            reason(why),
            format!("{node} unfenced"),
        ),
        _ => anyhow::bail!("not a single call"),
    };
    let answer = api.send_json(method, &path, &body).await?;
    print_json_or(out, json, &answer, |out| writeln!(out, "{done}"))
}

/// A path segment, percent-encoded.
fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_json_or(
    out: &mut (dyn Write + Send),
    json: bool,
    value: &Value,
    table: impl FnOnce(&mut (dyn Write + Send)) -> std::io::Result<()>,
) -> anyhow::Result<i32> {
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(value)?)?;
    } else {
        table(out)?;
    }
    Ok(exit::OK)
}

/// A time from the API (RFC 3339) as a cell: `2026-12-07 13:26:05` (UTC).
fn time_cell(v: &Value) -> String {
    v.as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or_else(
            || cell(v),
            |t| t.to_utc().format("%Y-%m-%d %H:%M:%S").to_string(),
        )
}

/// A JSON value as a cell: strings bare, null as `-`.
fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn status(
    api: &Api,
    cluster: Option<String>,
    watch: Option<u64>,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<i32> {
    loop {
        let text = match &cluster {
            None => {
                let list = api
                    .get("/api/v1/clusters", &[("limit", "1000".into())])
                    .await?;
                if json {
                    serde_json::to_string_pretty(&list)?
                } else {
                    clusters_table(&list)
                }
            }
            Some(name) => {
                let c = api
                    .get(&format!("/api/v1/clusters/{}", segment(name)), &[])
                    .await?;
                if json {
                    serde_json::to_string_pretty(&c)?
                } else {
                    cluster_table(&c)
                }
            }
        };
        writeln!(out, "{}", text.trim_end())?;
        let Some(seconds) = watch else {
            return Ok(exit::OK);
        };
        out.flush()?;
        tokio::time::sleep(Duration::from_secs(seconds.max(1))).await;
        writeln!(out)?;
    }
}

fn clusters_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let masters: Vec<String> = c["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| format!("{}={}", cell(&i["name"]), cell(&i["master"])))
                .collect();
            vec![
                cell(&c["name"]),
                cell(&c["health"]),
                format!("{}/{}", cell(&c["nodes_up"]), cell(&c["nodes_total"])),
                masters.join(" "),
                c["reasons"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(cell)
                    .collect::<Vec<_>>()
                    .join("; "),
            ]
        })
        .collect();
    render(
        &["CLUSTER", "HEALTH", "UP", "MASTERS", "WHY"],
        &rows,
        terminal_width(),
    )
}

/// One line per node of cluster `c` with service checks not passing: how many of how many, and
/// each failing check with its latest detail; empty when every check passes.
fn failing_checks(c: &Value) -> String {
    let mut text = String::new();
    for n in c["nodes"].as_array().into_iter().flatten() {
        let checks = n["checks"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let failing: Vec<String> = checks
            .iter()
            .filter(|k| k["passing"] == Value::Bool(false))
            .map(|k| match k["detail"].as_str() {
                Some(d) if !d.is_empty() => format!("{} ({d})", cell(&k["name"])),
                _ => cell(&k["name"]),
            })
            .collect();
        if !failing.is_empty() {
            text.push_str(&format!(
                "  {}: {} of {} service checks failing: {}\n",
                cell(&n["node_id"]),
                failing.len(),
                checks.len(),
                failing.join(", ")
            ));
        }
    }
    text
}

fn cluster_table(c: &Value) -> String {
    let width = terminal_width();
    let mut text = format!(
        "cluster {}: {} (epoch {})\n",
        cell(&c["name"]),
        cell(&c["health"]),
        cell(&c["epoch"])
    );
    for reason in c["reasons"].as_array().into_iter().flatten() {
        text.push_str(&format!("  {}\n", cell(reason)));
    }
    text.push_str(&failing_checks(c));
    for instance in c["instances"].as_array().into_iter().flatten() {
        let vips: Vec<String> = instance["vips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                let holders: Vec<String> = v["holders"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(cell)
                    .collect();
                format!(
                    "{} on {}",
                    cell(&v["vip"]),
                    if holders.is_empty() {
                        "nobody".into()
                    } else {
                        holders.join(",")
                    }
                )
            })
            .collect();
        text.push_str(&format!(
            "\nVRRP instance {}: master {}; {}\n",
            cell(&instance["name"]),
            cell(&instance["master"]),
            vips.join("; ")
        ));
        let rows: Vec<Vec<String>> = instance["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                vec![
                    cell(&m["node_id"]),
                    cell(&m["node_status"]),
                    cell(&m["state"]),
                    format!(
                        "{}/{}",
                        cell(&m["effective_priority"]),
                        cell(&m["base_priority"])
                    ),
                    if m["holds_vip"] == Value::Bool(true) {
                        "yes".into()
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect();
        text.push_str(&render(
            &["NODE", "STATUS", "STATE", "PRIORITY", "VIP"],
            &rows,
            width,
        ));
    }
    for link in c["replication"].as_array().into_iter().flatten() {
        text.push_str(&format!(
            "\nreplication {}: {}, primary {}\n",
            cell(&link["link"]),
            cell(&link["health"]),
            cell(&link["primary"])
        ));
        let rows: Vec<Vec<String>> = link["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                vec![
                    cell(&m["node_id"]),
                    cell(&m["role"]),
                    cell(&m["state"]),
                    cell(&m["lag_bytes"]),
                    cell(&m["lag_seconds"]),
                ]
            })
            .collect();
        text.push_str(&render(
            &["NODE", "ROLE", "STATE", "LAG BYTES", "LAG S"],
            &rows,
            width,
        ));
    }
    text
}

/// What `hapulse switchover` was asked.
struct SwitchoverArgs {
    cluster: String,
    to: String,
    instance: Option<String>,
    reason: String,
    at: Option<String>,
    dry_run: bool,
    yes: bool,
}

async fn switchover(
    api: &Api,
    args: SwitchoverArgs,
    json: bool,
    out: &mut (dyn Write + Send),
    input: &mut (dyn BufRead + Send),
) -> anyhow::Result<i32> {
    let scheduled_at = match &args.at {
        Some(at) => Some(
            chrono::DateTime::parse_from_rfc3339(at)
                .map_err(|e| anyhow::anyhow!("--at {at:?} is not an RFC 3339 time: {e}"))?
                .to_utc(),
        ),
        None => None,
    };
    let path = format!("/api/v1/clusters/{}/switchover", segment(&args.cluster));
    let mut body = serde_json::json!({
        "target_node": args.to,
        "instance": args.instance,
        "reason": args.reason,
        "scheduled_at": scheduled_at,
        "dry_run": true,
    });
    let preview = api.send_json(reqwest::Method::POST, &path, &body).await?;
    if json && args.dry_run {
        writeln!(out, "{}", serde_json::to_string_pretty(&preview)?)?;
        return Ok(exit::OK);
    }
    if !json {
        write_plan(out, &preview["plan"])?;
    }
    if args.dry_run {
        return Ok(exit::OK);
    }
    if !args.yes {
        write!(out, "Switch over? [y/N] ")?;
        out.flush()?;
        let mut answer = String::new();
        input.read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            writeln!(out, "not started")?;
            return Ok(exit::ABORTED);
        }
    }
    body["dry_run"] = Value::Bool(false);
    let accepted = api.send_json(reqwest::Method::POST, &path, &body).await?;
    let id = cell(&accepted["id"]);
    if !json {
        writeln!(
            out,
            "switchover {id} accepted (epoch {})",
            cell(&accepted["epoch"])
        )?;
    }
    follow(api, &id, json, out).await
}

fn write_plan(out: &mut (dyn Write + Send), plan: &Value) -> std::io::Result<()> {
    writeln!(
        out,
        "{} of {}/{}: {} → {}{}",
        cell(&plan["kind"]),
        cell(&plan["cluster"]),
        cell(&plan["instance"]),
        cell(&plan["old_master"]),
        cell(&plan["target_node"]),
        plan["link"]
            .as_str()
            .map(|l| format!(
                " (moves {l}; target lag {} bytes)",
                cell(&plan["target_lag_bytes"])
            ))
            .unwrap_or_default()
    )?;
    for (n, step) in plan["steps"].as_array().into_iter().flatten().enumerate() {
        writeln!(
            out,
            "  {}. {}: {}",
            n + 1,
            cell(&step["name"]),
            cell(&step["description"])
        )?;
    }
    Ok(())
}

/// Follows switchover `id` until it ends, printing each step as it finishes; exit 0 when it
/// succeeded, 1 when it failed.
async fn follow(
    api: &Api,
    id: &str,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<i32> {
    let path = format!("/api/v1/switchovers/{}", segment(id));
    let mut shown = 0;
    loop {
        let sw = api.get(&path, &[]).await?;
        let steps: Vec<Value> = sw["steps"].as_array().cloned().unwrap_or_default();
        if !json {
            for step in steps.iter().skip(shown) {
                if !matches!(
                    step["state"].as_str(),
                    Some("succeeded" | "failed" | "skipped")
                ) {
                    break;
                }
                writeln!(
                    out,
                    "  {} {}: {}",
                    cell(&step["state"]),
                    cell(&step["name"]),
                    cell(&step["message"])
                )?;
                shown += 1;
            }
            out.flush()?;
        }
        match sw["state"].as_str() {
            Some("succeeded") => {
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&sw)?)?;
                } else {
                    writeln!(out, "succeeded")?;
                }
                return Ok(exit::OK);
            }
            Some("failed" | "cancelled") => {
                if json {
                    writeln!(out, "{}", serde_json::to_string_pretty(&sw)?)?;
                } else {
                    writeln!(out, "{}: {}", cell(&sw["state"]), cell(&sw["error"]))?;
                }
                return Ok(exit::FAILED);
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// What `hapulse events` was asked.
struct EventArgs {
    cluster: Option<String>,
    since: Option<humantime::Duration>,
    limit: u32,
    follow: bool,
}

async fn events(
    api: &Api,
    args: EventArgs,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<i32> {
    let mut since = match args.since {
        Some(since) => Some(chrono::Utc::now() - chrono::Duration::from_std(*since)?),
        None => None,
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut first = true;
    loop {
        let mut query = vec![("limit", args.limit.to_string())];
        if let Some(c) = &args.cluster {
            query.push(("cluster", c.clone()));
        }
        if let Some(from) = since {
            query.push((
                "since",
                from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ));
        }
        let list = api.get("/api/v1/events", &query).await?;
        // Oldest first when following, so new lines come at the bottom.
        let mut fresh: Vec<Value> = list["events"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| seen.insert(e["id"].as_i64().unwrap_or_default()))
            .cloned()
            .collect();
        if args.follow {
            fresh.reverse();
        }
        if json {
            for e in &fresh {
                writeln!(out, "{e}")?;
            }
        } else {
            let rows: Vec<Vec<String>> = fresh
                .iter()
                .map(|e| {
                    vec![
                        time_cell(&e["at"]),
                        cell(&e["cluster"]),
                        cell(&e["node_id"]),
                        cell(&e["kind"]),
                        cell(&e["message"]),
                    ]
                })
                .collect();
            let text = render(
                &["AT", "CLUSTER", "NODE", "KIND", "WHAT"],
                &rows,
                terminal_width(),
            );
            // The header once.
            let body = if first {
                &text[..]
            } else {
                text.split_once('\n').map_or("", |(_, b)| b)
            };
            write!(out, "{body}")?;
        }
        first = false;
        if !args.follow {
            return Ok(exit::OK);
        }
        out.flush()?;
        if let Some(latest) = fresh.last().and_then(|e| e["at"].as_str()) {
            since = chrono::DateTime::parse_from_rfc3339(latest)
                .ok()
                .map(|t| t.to_utc())
                .or(since);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn silence(
    api: &Api,
    action: SilenceAction,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<i32> {
    match action {
        SilenceAction::Add {
            cluster,
            node,
            rule,
            severity,
            duration,
            reason,
        } => {
            let ends_at = chrono::Utc::now() + chrono::Duration::from_std(*duration)?;
            let body = serde_json::json!({
                "cluster": cluster, "node_id": node, "rules": rule, "severity": severity,
                "ends_at": ends_at, "reason": reason,
            });
            let silence = api
                .send_json(reqwest::Method::POST, "/api/v1/silences", &body)
                .await?;
            print_json_or(out, json, &silence, |out| {
                writeln!(
                    out,
                    "silence {} until {}",
                    cell(&silence["id"]),
                    cell(&silence["ends_at"])
                )
            })
        }
        SilenceAction::List => {
            let list = api.get("/api/v1/silences", &[]).await?;
            print_json_or(out, json, &list, |out| {
                let rows: Vec<Vec<String>> = list["silences"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| {
                        let rules: Vec<String> = s["rules"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(cell)
                            .collect();
                        vec![
                            cell(&s["id"]),
                            cell(&s["cluster"]),
                            cell(&s["node_id"]),
                            if rules.is_empty() {
                                "-".into()
                            } else {
                                rules.join(",")
                            },
                            time_cell(&s["ends_at"]),
                            cell(&s["reason"]),
                        ]
                    })
                    .collect();
                write!(
                    out,
                    "{}",
                    render(
                        &["ID", "CLUSTER", "NODE", "RULES", "UNTIL", "WHY"],
                        &rows,
                        terminal_width()
                    )
                )
            })
        }
        SilenceAction::Expire { id } => {
            let path = format!("/api/v1/silences/{}", segment(&id));
            let answer = api
                .send_json(reqwest::Method::DELETE, &path, &Value::Null)
                .await?;
            print_json_or(out, json, &answer, |out| {
                writeln!(out, "silence {id} ended")
            })
        }
    }
}

async fn failover(
    api: &Api,
    action: FailoverAction,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<i32> {
    match action {
        FailoverAction::Confirm {
            cluster,
            to,
            reason,
            accept_data_loss,
            instance,
        } => {
            let path = format!("/api/v1/clusters/{}/failover", segment(&cluster));
            let mut body = serde_json::json!({
                "target_node": to, "reason": reason, "accept_data_loss": accept_data_loss,
            });
            if let Some(instance) = instance {
                body["instance"] = serde_json::Value::String(instance);
            }
            let accepted = api.send_json(reqwest::Method::POST, &path, &body).await?;
            let id = cell(&accepted["id"]);
            if !json {
                writeln!(out, "failover {id} to {to} started")?;
            }
            follow(api, &id, json, out).await
        }
        FailoverAction::Ack { id, reason } => {
            let path = format!("/api/v1/switchovers/{}/acknowledge", segment(&id));
            let answer = api
                .send_json(
                    reqwest::Method::POST,
                    &path,
                    &serde_json::json!({ "reason": reason }),
                )
                .await?;
            print_json_or(out, json, &answer, |out| writeln!(out, "{id} acknowledged"))
        }
    }
}

async fn history(
    api: &Api,
    node: &str,
    metric: &str,
    of: [(&'static str, Option<String>); 2],
    since: humantime::Duration,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<i32> {
    let from = chrono::Utc::now() - chrono::Duration::from_std(*since)?;
    let mut query = vec![
        ("metric", metric.to_string()),
        (
            "from",
            from.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ),
    ];
    // The link or check the metric is of, when given.
    query.extend(
        of.into_iter()
            .filter_map(|(name, value)| Some((name, value?))),
    );
    let path = format!("/api/v1/nodes/{}/history", segment(node));
    let series = api.get(&path, &query).await?;
    print_json_or(out, json, &series, |out| {
        let rows: Vec<Vec<String>> = series["points"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                vec![
                    cell(&p["t"]),
                    cell(&p["min"]),
                    cell(&p["avg"]),
                    cell(&p["max"]),
                    cell(&p["count"]),
                ]
            })
            .collect();
        write!(
            out,
            "{}",
            render(
                &["AT", "MIN", "AVG", "MAX", "SAMPLES"],
                &rows,
                terminal_width()
            )
        )
    })
}

async fn alerts(api: &Api, json: bool, out: &mut (dyn Write + Send)) -> anyhow::Result<i32> {
    let list = api.get("/api/v1/alerts", &[]).await?;
    print_json_or(out, json, &list, |out| {
        let rows: Vec<Vec<String>> = list["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                vec![
                    cell(&a["severity"]),
                    cell(&a["rule"]),
                    cell(&a["cluster"]),
                    cell(&a["state"]),
                    if a["silenced"] == Value::Bool(true) {
                        "silenced".into()
                    } else {
                        "-".into()
                    },
                    cell(&a["summary"]),
                ]
            })
            .collect();
        write!(
            out,
            "{}",
            render(
                &["SEVERITY", "RULE", "CLUSTER", "STATE", "MUTED", "SUMMARY"],
                &rows,
                terminal_width()
            )
        )
    })
}
