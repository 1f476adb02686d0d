//! Message templates of the HTTP receivers (minijinja): built-in ones compiled in from
//! `web/templates/receivers/`, which `alerts.template_dir` (a file of the same name there) or a
//! receiver's `template_file` replace.
//!
//! | template | used for |
//! | --- | --- |
//! | `summary.txt` | PagerDuty's `payload.summary` (one alert) |
//! | `description.txt` | the `description` of the `hapulse` webhook format and of Alertmanager's annotations (one alert) |
//! | `slack.txt` | the Slack message (Slack mrkdwn; every alert of the message) |
//!
//! Every template sees `alert` (the alert at hand: the first of the message for `slack.txt`),
//! `alerts` (every alert of the message), `cluster`, `status` (`firing`, or `resolved` when
//! every alert of the message is) and `dashboard_url` (the cluster's page). An alert has
//! `status` (`firing`, `resolved`), `kind` (`firing`, `repeat`, `resolved`), `rule`,
//! `severity`, `cluster`, `node`, `instance`, `link` (each may be none), `summary`,
//! `starts_at`, `ends_at` (RFC 3339 UTC; none while firing), `fingerprint`, `alert_id` and
//! `dashboard_url`. The filter `slack_escape` escapes `&`, `<` and `>` as Slack asks.
//!
//! A template that does not parse is a configuration error at start (naming the file and
//! line); one that fails while rendering falls back to the built-in template, and the reason is
//! logged. A foundation: it imports nothing of the crate.

use std::path::{Path, PathBuf};

use minijinja::Environment;
use serde::Serialize;

/// The built-in templates, by name.
pub const BUILTIN: [(&str, &str); 3] = [
    (
        "summary.txt",
        include_str!("../../../web/templates/receivers/summary.txt"),
    ),
    (
        "description.txt",
        include_str!("../../../web/templates/receivers/description.txt"),
    ),
    (
        "slack.txt",
        include_str!("../../../web/templates/receivers/slack.txt"),
    ),
];

/// A template file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
#[error("template {}{}: {detail}", path.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct TemplateError {
    /// The file.
    pub path: PathBuf,
    /// The line of the error, when the parser knows it (1-based).
    pub line: Option<usize>,
    /// What is wrong.
    pub detail: String,
}

/// The templates one receiver renders with: the built-in ones and the replacements read from
/// files.
pub struct Templates {
    builtin: Environment<'static>,
    custom: Environment<'static>,
    /// Built-in name → the file that replaces it.
    replaced: Vec<(&'static str, PathBuf)>,
}

/// Escapes text for Slack's mrkdwn (`&`, `<`, `>`).
pub fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.add_filter("slack_escape", |s: String| slack_escape(&s));
    env
}

/// The built-in name a file of `dir` or a receiver's own file replaces.
fn name_of(builtin: &str) -> Option<&'static str> {
    BUILTIN.iter().map(|(n, _)| *n).find(|n| *n == builtin)
}

impl Templates {
    /// The built-in templates, replaced by the files of the same name in `dir` and by `own`
    /// (a receiver's `template_file` and the built-in name it replaces).
    pub fn load(
        dir: Option<&Path>,
        own: Option<(&str, &Path)>,
    ) -> Result<Templates, TemplateError> {
        let mut builtin = environment();
        for (name, source) in BUILTIN {
            builtin
                .add_template(name, source)
                .map_err(|e| parse_error(Path::new(name), &e))?;
        }
        let mut templates = Templates {
            builtin,
            custom: environment(),
            replaced: Vec::new(),
        };
        if let Some(dir) = dir {
            for (name, _) in BUILTIN {
                let path = dir.join(name);
                if path.exists() {
                    templates.replace(name, path)?;
                }
            }
        }
        if let Some((name, path)) = own {
            let name = name_of(name).ok_or_else(|| TemplateError {
                path: path.to_path_buf(),
                line: None,
                detail: format!("no built-in template {name}"),
            })?;
            templates.replace(name, path.to_path_buf())?;
        }
        Ok(templates)
    }

    fn replace(&mut self, name: &'static str, path: PathBuf) -> Result<(), TemplateError> {
        let source = std::fs::read_to_string(&path).map_err(|e| TemplateError {
            path: path.clone(),
            line: None,
            detail: e.to_string(),
        })?;
        self.custom
            .add_template_owned(name, source)
            .map_err(|e| parse_error(&path, &e))?;
        self.replaced.retain(|(n, _)| *n != name);
        self.replaced.push((name, path));
        Ok(())
    }

    /// Renders template `name` with `context`: the replacement when there is one, else (or
    /// should the replacement fail) the built-in one. Never fails: should even the built-in
    /// one fail, the error is logged and `fallback` returned.
    pub fn render<C: Serialize>(&self, name: &str, context: &C, fallback: &str) -> String {
        if let Some((_, path)) = self.replaced.iter().find(|(n, _)| *n == name) {
            match self
                .custom
                .get_template(name)
                .and_then(|t| t.render(context))
            {
                Ok(text) => return text,
                Err(e) => tracing::warn!(
                    template = %path.display(),
                    error = %render_error(&e),
                    "message template failed; the built-in one is used"
                ),
            }
        }
        match self
            .builtin
            .get_template(name)
            .and_then(|t| t.render(context))
        {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(template = name, error = %render_error(&e), "built-in message template failed");
                fallback.to_string()
            }
        }
    }
}

fn parse_error(path: &Path, e: &minijinja::Error) -> TemplateError {
    TemplateError {
        path: path.to_path_buf(),
        line: e.line(),
        detail: e
            .detail()
            .map_or_else(|| e.kind().to_string(), |d| format!("{}: {d}", e.kind())),
    }
}

/// A render error with its line, without the values it was rendering.
fn render_error(e: &minijinja::Error) -> String {
    match (e.line(), e.detail()) {
        (Some(line), Some(d)) => format!("line {line}: {}: {d}", e.kind()),
        (Some(line), None) => format!("line {line}: {}", e.kind()),
        (None, Some(d)) => format!("{}: {d}", e.kind()),
        (None, None) => e.kind().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacements_parse_at_load_and_fall_back_when_rendering_fails() {
        let dir = std::env::temp_dir().join(format!("hapulse-templates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("summary.txt"), "S {{ alert.rule }}").unwrap();
        let bad = dir.join("bad.txt");
        std::fs::write(&bad, "line one\n{% if alert.rule %}\nunclosed").unwrap();
        let failing = dir.join("failing.txt");
        std::fs::write(&failing, "{{ alert.rule + 1 }}").unwrap();

        let context =
            serde_json::json!({"alert": {"rule": "node_down", "summary": "x & <y>"}, "alerts": []});
        let t = Templates::load(Some(&dir), None).unwrap();
        assert_eq!(t.render("summary.txt", &context, "-"), "S node_down");

        let err = Templates::load(None, Some(("slack.txt", &bad)))
            .err()
            .unwrap();
        let text = err.to_string();
        assert!(
            text.contains("bad.txt") && text.contains("line 3"),
            "{text}"
        );

        let t = Templates::load(None, Some(("summary.txt", &failing))).unwrap();
        assert_eq!(t.render("summary.txt", &context, "-"), "x & <y>");
        assert!(Templates::load(None, Some(("nope.txt", &failing))).is_err());
        assert_eq!(slack_escape("a & <b>"), "a &amp; &lt;b&gt;");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
