//! `crm_mon`'s XML status into a [`PacemakerReport`].
//!
//! Two forms, the same elements: `crm_mon --output-as=xml` (Pacemaker 2.0.3 onwards) wraps them in
//! `<pacemaker-result api-version=…>` with a `<status code message>` child; the older
//! `crm_mon --as-xml` (deprecated in 2.1, still accepted by 2.1.5) wraps them in
//! `<crm_mon version=…>`. What is read, from Pacemaker's schema (`xml/api/crm_mon-2.*.rng`) and
//! checked against real output of Debian's Pacemaker 2.1.5 (`fixtures/`):
//!
//! - `summary/current_dc`: `present`, `name`, `with_quorum`;
//! - `nodes/node`: `name`, `online`, `standby`, `standby_onfail`, `maintenance`, `unclean`,
//!   `resources_running`;
//! - `resources//resource` (inside `group`, `clone`, `bundle` too): `id`, `resource_agent`,
//!   `role`, `target_role`, `active`, `failed`, `managed`, `blocked`, and the `name` of each
//!   `node` child (where it runs);
//! - `failures/failure`: `op_key` (`RSC_TASK_INTERVAL`), `node`, `task`, `exitcode`,
//!   `exitstatus`, `exitreason`, `last-rc-change`.
//!
//! Elements and attributes not listed are ignored, so newer Pacemaker versions parse. Input
//! beyond [`MAX_XML_BYTES`] or with a DTD is refused before it is parsed; texts are cut to
//! [`MAX_PACEMAKER_TEXT_BYTES`] without control characters and lists to the protocol's bounds, so
//! the report is one the server accepts.

use hapulse_protocol::{
    PacemakerFailure, PacemakerNode, PacemakerReport, PacemakerResource, MAX_PACEMAKER_FAILURES,
    MAX_PACEMAKER_NODES, MAX_PACEMAKER_RESOURCES, MAX_PACEMAKER_TEXT_BYTES,
};
use roxmltree::{Document, Node, ParsingOptions};

/// Largest `crm_mon` output parsed, bytes (4 MiB: a cluster of 32 nodes and a few hundred
/// resources with their operation history prints well under 1 MiB).
pub const MAX_XML_BYTES: usize = 4 * 1024 * 1024;

/// Most XML nodes (elements, attributes' parents, texts) parsed; roxmltree stops beyond it, so
/// a document of many tiny elements cannot take the agent's memory.
const MAX_XML_NODES: u32 = 500_000;

/// Why `crm_mon`'s output could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    /// Nothing was printed.
    #[error("crm_mon printed nothing")]
    Empty,
    /// Beyond [`MAX_XML_BYTES`].
    #[error("crm_mon printed {0} bytes, more than the {MAX_XML_BYTES} read")]
    TooLarge(usize),
    /// Not well-formed XML (or a DTD, or too many nodes).
    #[error("crm_mon printed malformed XML: {0}")]
    Xml(String),
    /// Well-formed, but not `crm_mon`'s status.
    #[error("not crm_mon's XML status: {0}")]
    NotCrmMon(String),
}

/// Parses `crm_mon`'s XML output. `hostname` (this host's name) picks [`PacemakerReport::local_node`].
///
/// A status that says Pacemaker could not be asked (`<status code="102" message="Not
/// connected">` with `<errors>`) is a report with `connected: false` and the message and errors
/// as its `error`, not an Err.
pub fn parse_crm_mon(text: &str, hostname: &str) -> Result<PacemakerReport, ParseError> {
    if text.len() > MAX_XML_BYTES {
        return Err(ParseError::TooLarge(text.len()));
    }
    if text.trim().is_empty() {
        return Err(ParseError::Empty);
    }
    let options = ParsingOptions {
        allow_dtd: false,
        nodes_limit: MAX_XML_NODES,
    };
    let doc =
        Document::parse_with_options(text, options).map_err(|e| ParseError::Xml(e.to_string()))?;
    let root = doc.root_element();
    match root.tag_name().name() {
        "pacemaker-result" | "crm_mon" => {}
        other => {
            return Err(ParseError::NotCrmMon(format!(
                "root element <{}>, not <pacemaker-result> or <crm_mon>",
                clean(other)
            )))
        }
    }
    let summary = child(root, "summary");
    if summary.is_none() {
        return Ok(not_connected(root));
    }
    let dc = summary.and_then(|s| child(s, "current_dc"));
    let dc_present = dc.is_some_and(|d| flag(d, "present"));
    let nodes = read_nodes(root)?;
    let local_node = nodes
        .iter()
        .find(|n| n.name == hostname)
        .map(|n| n.name.clone());
    let (resources, resources_omitted) = read_resources(root)?;
    let (failures, failures_omitted) = read_failures(root);
    Ok(PacemakerReport {
        connected: true,
        error: None,
        local_node,
        dc: dc
            .filter(|_| dc_present)
            .and_then(|d| d.attribute("name"))
            .map(clean),
        with_quorum: dc_present && dc.is_some_and(|d| flag(d, "with_quorum")),
        nodes,
        resources,
        resources_omitted,
        failures,
        failures_omitted,
    })
}

/// The report of a `crm_mon` that could not reach the cluster: its status message and errors.
fn not_connected(root: Node<'_, '_>) -> PacemakerReport {
    let status = child(root, "status");
    let mut error = match status {
        Some(s) => format!(
            "{} (code {})",
            s.attribute("message").unwrap_or("no status"),
            s.attribute("code").unwrap_or("?")
        ),
        None => "crm_mon printed no cluster summary".to_string(),
    };
    let errors = status
        .and_then(|s| child(s, "errors"))
        .into_iter()
        .flat_map(|e| e.children().filter(|c| c.has_tag_name("error")))
        .filter_map(|e| e.text());
    for e in errors {
        error.push_str(": ");
        error.push_str(e.trim());
    }
    PacemakerReport {
        connected: false,
        error: Some(clean(&error)),
        local_node: None,
        dc: None,
        with_quorum: false,
        nodes: Vec::new(),
        resources: Vec::new(),
        resources_omitted: 0,
        failures: Vec::new(),
        failures_omitted: 0,
    }
}

fn read_nodes(root: Node<'_, '_>) -> Result<Vec<PacemakerNode>, ParseError> {
    let Some(nodes) = child(root, "nodes") else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for n in nodes.children().filter(|c| c.has_tag_name("node")) {
        if out.len() == MAX_PACEMAKER_NODES {
            return Err(ParseError::NotCrmMon(format!(
                "more than {MAX_PACEMAKER_NODES} nodes"
            )));
        }
        out.push(PacemakerNode {
            name: required(n, "name")?,
            online: flag(n, "online"),
            standby: flag(n, "standby") || flag(n, "standby_onfail"),
            maintenance: flag(n, "maintenance"),
            unclean: flag(n, "unclean"),
            resources_running: n
                .attribute("resources_running")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
        });
    }
    Ok(out)
}

/// Every `resource` element under `resources`, at any depth, with the nearest enclosing group,
/// clone or bundle as its parent; the count beyond the bound.
fn read_resources(root: Node<'_, '_>) -> Result<(Vec<PacemakerResource>, u32), ParseError> {
    let Some(resources) = child(root, "resources") else {
        return Ok((Vec::new(), 0));
    };
    let mut out = Vec::new();
    let mut omitted = 0u32;
    for r in resources
        .descendants()
        .filter(|d| d.has_tag_name("resource"))
    {
        if out.len() == MAX_PACEMAKER_RESOURCES {
            omitted = omitted.saturating_add(1);
            continue;
        }
        let parent = r
            .ancestors()
            .skip(1)
            .take_while(|a| *a != resources)
            .find(|a| matches!(a.tag_name().name(), "group" | "clone" | "bundle"))
            .and_then(|a| a.attribute("id"))
            .map(clean);
        out.push(PacemakerResource {
            id: required(r, "id")?,
            parent,
            agent: r.attribute("resource_agent").map(clean).unwrap_or_default(),
            role: r.attribute("role").map_or_else(|| "Unknown".into(), clean),
            target_role: r.attribute("target_role").map(clean),
            active: flag(r, "active"),
            failed: flag(r, "failed"),
            managed: r.attribute("managed").is_none_or(|v| v == "true"),
            blocked: flag(r, "blocked"),
            nodes: r
                .children()
                .filter(|c| c.has_tag_name("node"))
                .filter_map(|c| c.attribute("name"))
                .take(MAX_PACEMAKER_NODES)
                .map(clean)
                .collect(),
        });
    }
    Ok((out, omitted))
}

fn read_failures(root: Node<'_, '_>) -> (Vec<PacemakerFailure>, u32) {
    let Some(failures) = child(root, "failures") else {
        return (Vec::new(), 0);
    };
    let mut out = Vec::new();
    let mut omitted = 0u32;
    for f in failures.children().filter(|c| c.has_tag_name("failure")) {
        if out.len() == MAX_PACEMAKER_FAILURES {
            omitted = omitted.saturating_add(1);
            continue;
        }
        let task = f.attribute("task").unwrap_or_default();
        let op_key = f.attribute("op_key").unwrap_or_default();
        let mut reason = f.attribute("exitstatus").unwrap_or_default().to_string();
        if let Some(why) = f.attribute("exitreason").filter(|r| !r.is_empty()) {
            reason = format!("{reason}: {why}");
        }
        out.push(PacemakerFailure {
            resource: clean(resource_of(op_key, task)),
            task: clean(task),
            node: f.attribute("node").map(clean).unwrap_or_default(),
            exit_code: f
                .attribute("exitcode")
                .and_then(|v| v.parse().ok())
                .unwrap_or(-1),
            exit_reason: clean(&reason),
            last_rc_change: f.attribute("last-rc-change").map(clean),
        });
    }
    (out, omitted)
}

/// The resource of an operation key, `RSC_TASK_INTERVAL` (`dummy_monitor_5000` → `dummy`;
/// resource ids may hold `_` themselves, so the task and interval are cut from the end).
fn resource_of<'a>(op_key: &'a str, task: &str) -> &'a str {
    let marker = format!("_{task}_");
    if !task.is_empty() {
        if let Some(at) = op_key.rfind(&marker) {
            return &op_key[..at];
        }
    }
    op_key.rsplitn(3, '_').last().unwrap_or(op_key)
}

fn child<'a, 'i>(node: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| c.has_tag_name(name))
}

/// An attribute that is `true` (Pacemaker prints booleans as `true`/`false`); absent is false.
fn flag(node: Node<'_, '_>, name: &str) -> bool {
    node.attribute(name) == Some("true")
}

fn required(node: Node<'_, '_>, name: &str) -> Result<String, ParseError> {
    match node.attribute(name).map(clean) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(ParseError::NotCrmMon(format!(
            "a <{}> without {name}",
            node.tag_name().name()
        ))),
    }
}

/// `text` without control characters, cut to [`MAX_PACEMAKER_TEXT_BYTES`] on a character
/// boundary.
fn clean(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > MAX_PACEMAKER_TEXT_BYTES {
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PacemakerReport {
        let text = match name {
            "healthy" => include_str!("fixtures/healthy.xml"),
            "moved" => include_str!("fixtures/moved.xml"),
            "failed" => include_str!("fixtures/failed.xml"),
            "standby" => include_str!("fixtures/standby.xml"),
            "stopped" => include_str!("fixtures/stopped.xml"),
            "maintenance" => include_str!("fixtures/maintenance.xml"),
            "split-h1" => include_str!("fixtures/split-h1.xml"),
            "split-h2" => include_str!("fixtures/split-h2.xml"),
            "legacy" => include_str!("fixtures/legacy.xml"),
            "not-running" => include_str!("fixtures/not-running.xml"),
            _ => unreachable!("no fixture {name}"),
        };
        parse_crm_mon(text, "pcmk-h1").unwrap()
    }

    #[test]
    fn a_healthy_two_node_cluster() {
        let r = fixture("healthy");
        assert!(r.connected);
        assert_eq!(r.error, None);
        assert_eq!(r.dc.as_deref(), Some("pcmk-h1"));
        assert_eq!(r.local_node.as_deref(), Some("pcmk-h1"));
        assert!(r.with_quorum);
        assert_eq!(r.online_nodes(), ["pcmk-h1", "pcmk-h2"]);
        assert!(r
            .nodes
            .iter()
            .all(|n| !n.standby && !n.maintenance && !n.unclean));
        assert_eq!(r.nodes[0].resources_running, 1);
        let dummy = &r.resources[0];
        assert_eq!(
            (dummy.id.as_str(), dummy.agent.as_str(), dummy.role.as_str()),
            ("dummy", "ocf:pacemaker:Dummy", "Started")
        );
        assert!(dummy.active && dummy.managed && !dummy.failed && !dummy.blocked);
        assert_eq!(dummy.nodes, ["pcmk-h1"]);
        assert_eq!(dummy.parent, None);
        assert!(r.failures.is_empty());
    }

    #[test]
    fn a_moved_resource_runs_on_the_other_node() {
        assert_eq!(fixture("moved").resources[0].nodes, ["pcmk-h2"]);
    }

    #[test]
    fn a_failed_monitor_is_a_failed_action() {
        let r = fixture("failed");
        assert_eq!(
            r.failures,
            [PacemakerFailure {
                resource: "dummy".into(),
                task: "monitor".into(),
                node: "pcmk-h2".into(),
                exit_code: 7,
                exit_reason: "not running".into(),
                last_rc_change: Some("2026-12-07 16:48:20Z".into()),
            }]
        );
        // Recovered: restarted in place, running again.
        assert!(r.resources[0].active);
    }

    #[test]
    fn standby_and_maintenance_nodes() {
        let s = fixture("standby");
        assert!(s.node("pcmk-h2").unwrap().standby);
        assert!(!s.node("pcmk-h1").unwrap().standby);
        let m = fixture("maintenance");
        assert!(m.node("pcmk-h2").unwrap().maintenance);
        assert!(!m.node("pcmk-h2").unwrap().standby);
    }

    #[test]
    fn a_resource_stopped_on_purpose_is_not_unexpected() {
        let r = fixture("stopped");
        let dummy = &r.resources[0];
        assert_eq!(dummy.role, "Stopped");
        assert_eq!(dummy.target_role.as_deref(), Some("Stopped"));
        assert!(!dummy.active && dummy.nodes.is_empty());
        assert!(!dummy.stopped_unexpectedly());
    }

    #[test]
    fn each_side_of_a_split_is_its_own_dc_without_quorum() {
        let one = fixture("split-h1");
        let two = parse_crm_mon(include_str!("fixtures/split-h2.xml"), "pcmk-h2").unwrap();
        assert_eq!(one.dc.as_deref(), Some("pcmk-h1"));
        assert_eq!(two.dc.as_deref(), Some("pcmk-h2"));
        assert!(!one.with_quorum && !two.with_quorum);
        assert_eq!(one.online_nodes(), ["pcmk-h1"]);
        assert_eq!(two.online_nodes(), ["pcmk-h2"]);
        assert_eq!(two.local_node.as_deref(), Some("pcmk-h2"));
        // no-quorum-policy=stop: the resource is stopped, and nobody asked for that.
        assert!(one.resources[0].stopped_unexpectedly());
    }

    #[test]
    fn the_old_as_xml_form_reads_the_same() {
        let legacy = fixture("legacy");
        let new = fixture("healthy");
        assert_eq!(legacy.dc, new.dc);
        assert_eq!(legacy.nodes, new.nodes);
        assert_eq!(legacy.resources, new.resources);
        assert!(legacy.connected && legacy.with_quorum);
    }

    #[test]
    fn pacemaker_not_running_is_a_report_with_the_reason() {
        let r = fixture("not-running");
        assert!(!r.connected);
        assert_eq!(
            r.error.as_deref(),
            Some(
                "Not connected (code 102): error: Could not connect to launcher: Connection \
                 refused: crm_mon: Connection to cluster failed: Connection refused"
            )
        );
        assert!(r.nodes.is_empty() && r.resources.is_empty());
    }

    #[test]
    fn groups_clones_and_unknown_elements() {
        let text = r#"<pacemaker-result api-version="9.9" request="crm_mon">
  <summary><current_dc present="true" name="a" with_quorum="true"/><future thing="x"/></summary>
  <nodes><node name="a" online="true"/><node name="b" online="false" unclean="true"/></nodes>
  <resources>
    <group id="g1" number_resources="2">
      <resource id="ip" resource_agent="ocf:heartbeat:IPaddr2" role="Started" active="true"><node name="a"/></resource>
      <resource id="web" role="Stopped" active="false"/>
    </group>
    <clone id="db-clone" multi_state="true">
      <resource id="db:0" role="Promoted" active="true"><node name="a"/></resource>
      <resource id="db:1" role="Stopped" active="false"/>
    </clone>
    <novel_kind id="z"><resource id="deep" role="Started" active="true" managed="false"><node name="a"/><node name="b"/></resource></novel_kind>
  </resources>
  <failures><failure op_key="my_rsc_x_start_0" node="b" task="start" exitcode="1" exitstatus="error" exitreason="no disk"/></failures>
  <status code="0" message="OK"/>
</pacemaker-result>"#;
        let r = parse_crm_mon(text, "elsewhere").unwrap();
        assert_eq!(r.local_node, None);
        assert!(r.node("b").unwrap().unclean);
        let ids: Vec<_> = r
            .resources
            .iter()
            .map(|x| (x.id.as_str(), x.parent.as_deref()))
            .collect();
        assert_eq!(
            ids,
            [
                ("ip", Some("g1")),
                ("web", Some("g1")),
                ("db:0", Some("db-clone")),
                ("db:1", Some("db-clone")),
                ("deep", None)
            ]
        );
        assert_eq!(r.resources[1].agent, "");
        assert!(!r.resources[4].managed);
        assert_eq!(r.resources[4].nodes, ["a", "b"]);
        assert_eq!(r.failures[0].resource, "my_rsc_x");
        assert_eq!(r.failures[0].exit_reason, "error: no disk");
        assert_eq!(r.failures[0].last_rc_change, None);
    }

    #[test]
    fn bad_input_gets_a_clear_error() {
        assert_eq!(parse_crm_mon("", "h"), Err(ParseError::Empty));
        assert_eq!(parse_crm_mon(" \n", "h"), Err(ParseError::Empty));
        let huge = format!("<crm_mon>{}</crm_mon>", " ".repeat(MAX_XML_BYTES));
        assert_eq!(
            parse_crm_mon(&huge, "h"),
            Err(ParseError::TooLarge(huge.len()))
        );
        let e = parse_crm_mon("<pacemaker-result><summary>", "h").unwrap_err();
        assert!(matches!(e, ParseError::Xml(_)), "{e}");
        assert!(
            e.to_string().starts_with("crm_mon printed malformed XML"),
            "{e}"
        );
        let e = parse_crm_mon("<html><body/></html>", "h").unwrap_err();
        assert_eq!(
            e.to_string(),
            "not crm_mon's XML status: root element <html>, not <pacemaker-result> or <crm_mon>"
        );
        let dtd = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><crm_mon/>"#;
        assert!(matches!(parse_crm_mon(dtd, "h"), Err(ParseError::Xml(_))));
        let nameless = "<crm_mon><summary/><nodes><node online=\"true\"/></nodes></crm_mon>";
        assert_eq!(
            parse_crm_mon(nameless, "h").unwrap_err().to_string(),
            "not crm_mon's XML status: a <node> without name"
        );
    }

    #[test]
    fn lists_and_texts_are_bounded() {
        let resources: String = (0..MAX_PACEMAKER_RESOURCES + 5)
            .map(|i| format!("<resource id=\"r{i}\" role=\"Started\" active=\"true\"/>"))
            .collect();
        let failures: String = (0..MAX_PACEMAKER_FAILURES + 2)
            .map(|i| format!("<failure op_key=\"r{i}_start_0\" task=\"start\" node=\"a\"/>"))
            .collect();
        let long = "x".repeat(1000);
        let text = format!(
            "<crm_mon><summary/><nodes><node name=\"a&#9;{long}\"/></nodes>\
             <resources>{resources}</resources><failures>{failures}</failures></crm_mon>"
        );
        let r = parse_crm_mon(&text, "a").unwrap();
        assert_eq!(r.resources.len(), MAX_PACEMAKER_RESOURCES);
        assert_eq!(r.resources_omitted, 5);
        assert_eq!(r.failures.len(), MAX_PACEMAKER_FAILURES);
        assert_eq!(r.failures_omitted, 2);
        assert_eq!(r.nodes[0].name.len(), MAX_PACEMAKER_TEXT_BYTES);
        assert!(r.nodes[0].name.starts_with("ax"));
        // No DC element at all: no DC, no quorum.
        assert_eq!((r.dc, r.with_quorum), (None, false));
        let many_nodes: String = (0..=MAX_PACEMAKER_NODES)
            .map(|i| format!("<node name=\"n{i}\"/>"))
            .collect();
        let text = format!("<crm_mon><summary/><nodes>{many_nodes}</nodes></crm_mon>");
        assert!(parse_crm_mon(&text, "a").is_err());
    }
}
