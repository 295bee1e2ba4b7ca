//! Rendering a [`Plan`] for people and programs: Terraform-like text for the
//! terminal, markdown for pull requests, versioned JSON, and the step graph
//! as DOT or mermaid. Pure functions from data to strings.

use crate::model::{human_bytes, HostName};
use crate::plan::{Action, Change, Plan, Step, Summary};
use serde_json::{json, Value};
use similar::{ChangeTag, TextDiff};
use std::fmt::Write as _;

/// Version of the JSON plan format, `MAJOR.MINOR`: a minor bump only adds
/// fields; a major bump means readers of another major must refuse.
pub const JSON_FORMAT: &str = "2.2";
/// GitHub comments are limited to 65,536 characters; stay well below.
pub const MARKDOWN_LIMIT: usize = 60_000;

/// Colour or not.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    pub color: bool,
}

impl Style {
    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }
    fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    fn red(&self, t: &str) -> String {
        self.paint("31", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
    fn bold(&self, t: &str) -> String {
        self.paint("1", t)
    }
}

fn symbol(action: Action) -> &'static str {
    match action {
        Action::Create => "+",
        Action::Start => "~",
        Action::Replace => "-/+",
        Action::Remove => "-",
        Action::NoOp => " ",
    }
}

fn colored_symbol(style: Style, action: Action) -> String {
    let s = format!("{:>3}", symbol(action));
    match action {
        Action::Create => style.green(&s),
        Action::Start => style.yellow(&s),
        Action::Replace => style.yellow(&s),
        Action::Remove => style.red(&s),
        Action::NoOp => s,
    }
}

fn verb(action: Action) -> &'static str {
    match action {
        Action::Create => "will be created",
        Action::Start => "will be started",
        Action::Replace => "must be replaced",
        Action::Remove => "will be destroyed",
        Action::NoOp => "is unchanged",
    }
}

/// The last line of a plan.
pub fn summary_line(s: Summary) -> String {
    if s.is_empty() {
        "No changes. The cluster matches the configuration.".to_string()
    } else {
        format!(
            "Plan: {} to add, {} to change, {} to destroy.",
            s.add, s.change, s.destroy
        )
    }
}

/// A value as the plan shows it: numbers and switches bare, text quoted.
fn quote(v: &str) -> String {
    let bare = !v.is_empty() && (v.parse::<f64>().is_ok() || matches!(v, "on" | "true" | "false"));
    if bare {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

/// One node's block.
fn change_block(out: &mut String, plan: &Plan, c: &Change, style: Style) {
    let _ = writeln!(
        out,
        "  {}",
        style.bold(&format!("# {} on {} {}", c.node, c.host, verb(c.action)))
    );
    let _ = writeln!(out, "  # ({})", c.cause());
    if let Some(i) = plan.interrupts.get(&c.node) {
        let _ = writeln!(out, "  # interrupts: {}", i.describe());
    }
    let _ = writeln!(
        out,
        "{} node {} {{",
        colored_symbol(style, c.action),
        quote(c.node.as_str())
    );
    match c.action {
        Action::Create => {
            if let Some(a) = &c.after {
                let lines = a.review_lines();
                let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                for (k, v) in lines {
                    let _ = writeln!(out, "      {} {k:width$} = {}", style.green("+"), quote(&v));
                }
            }
        }
        Action::Replace if !c.fields.is_empty() => {
            // One field at a time, its old line above its new one.
            for f in &c.fields {
                let old = f
                    .before
                    .as_ref()
                    .map(|b| format!("{} = {}\n", f.field, quote(b)))
                    .unwrap_or_default();
                let new = f
                    .after
                    .as_ref()
                    .map(|a| format!("{} = {}\n", f.field, quote(a)))
                    .unwrap_or_default();
                let diff = TextDiff::from_lines(&old, &new);
                for change in diff.iter_all_changes() {
                    let line = change.value().trim_end_matches('\n');
                    let rendered = match change.tag() {
                        ChangeTag::Delete => style.red(&format!("-   {line}")),
                        ChangeTag::Insert => style.green(&format!("+   {line}")),
                        ChangeTag::Equal => format!("    {line}"),
                    };
                    let _ = writeln!(out, "    {rendered}");
                }
            }
        }
        Action::Replace | Action::Start | Action::Remove | Action::NoOp => {
            if let Some(b) = &c.before {
                let short: String = b.id.chars().take(12).collect();
                let _ = writeln!(out, "        id    = {}", quote(&short));
                let _ = writeln!(out, "        image = {}", quote(&b.image));
                let state = match b.exit_code {
                    Some(code) if b.state == "exited" => format!("exited ({code})"),
                    _ => b.state.clone(),
                };
                let _ = writeln!(out, "        state = {}", quote(&state));
            }
        }
    }
    let _ = writeln!(out, "    }}");
    let _ = writeln!(out);
}

/// `environment `NAME`, ` when the plan was made in one.
fn environment_of(plan: &Plan) -> String {
    match &plan.environment {
        Some(e) => format!("environment `{e}`, "),
        None => String::new(),
    }
}

fn header(out: &mut String, plan: &Plan) {
    let nodes = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Remove)
        .count();
    let _ = writeln!(
        out,
        "Cluster `{}` ({}id `{}`): {} node(s) on {} host(s).",
        plan.cluster.name,
        environment_of(plan),
        plan.cluster.id,
        nodes,
        plan.hosts.len()
    );
    if !plan.overrides.is_empty() {
        let _ = writeln!(out, "Overrides in force:");
        for o in &plan.overrides {
            let _ = writeln!(out, "  {o}");
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Hosts:");
    let width = plan.hosts.iter().map(|h| h.host.0.len()).max().unwrap_or(0);
    for h in &plan.hosts {
        let engine = match &h.engine {
            Some(e) => format!(
                "Docker {} (API {}), {} CPUs, {:.1} GiB",
                e.version,
                e.api_version,
                e.cpus,
                e.memory_bytes as f64 / f64::from(1u32 << 30)
            ),
            None => "engine not described in the observation".to_string(),
        };
        let _ = writeln!(out, "  {:width$}  {engine}", h.host.0);
    }
    let _ = writeln!(out);
}

/// Terraform-like text.
pub fn text(plan: &Plan, style: Style) -> String {
    let mut out = String::new();
    header(&mut out, plan);
    let summary = plan.summary();
    if summary.is_empty() {
        if let Some(p) = &plan.preflight {
            let _ = writeln!(out, "{}", p.render());
        }
        for n in &plan.notes {
            let _ = writeln!(out, "Note: {n}");
        }
        let _ = writeln!(out, "{}", style.bold(&summary_line(summary)));
        return out;
    }
    let _ = writeln!(
        out,
        "seedcore will perform the following actions (+ create, ~ start, -/+ replace, - destroy):"
    );
    let _ = writeln!(out);
    for c in plan.effective() {
        change_block(&mut out, plan, c, style);
    }
    let unchanged: Vec<&str> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::NoOp)
        .map(|c| c.node.as_str())
        .collect();
    if !unchanged.is_empty() {
        let _ = writeln!(out, "Unchanged: {}", unchanged.join(", "));
        let _ = writeln!(out);
    }
    steps_section(&mut out, plan);
    firewall_section(&mut out, plan);
    if let Some(p) = &plan.preflight {
        let _ = writeln!(out, "{}", p.render());
    }
    for n in &plan.notes {
        let _ = writeln!(out, "Note: {n}");
    }
    if !plan.notes.is_empty() {
        let _ = writeln!(out);
    }
    let _ = writeln!(out, "{}", style.bold(&summary_line(summary)));
    out
}

fn steps_section(out: &mut String, plan: &Plan) {
    let steps = plan.graph.numbered();
    let _ = writeln!(out, "Steps, in order ({}):", steps.len());
    for s in &steps {
        let after = if s.after.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = s.after.iter().map(|n| n.to_string()).collect();
            format!("  (after {})", list.join(", "))
        };
        let _ = writeln!(
            out,
            "  {:>2}. {:<50} on {}{after}",
            s.number,
            step_label(s.step),
            s.step.host()
        );
    }
    let _ = writeln!(out);
}

fn step_label(step: &Step) -> String {
    match step {
        Step::PullImage { image, .. } => format!("pull {image}"),
        Step::PushImage { image, of: 0, .. } => format!("push {image} (after its build)"),
        Step::PushImage {
            image,
            bytes,
            layers,
            of,
            ..
        } => format!(
            "push {image} ({layers} of {of} layers, {})",
            crate::model::human_size(*bytes)
        ),
        other => other.to_string(),
    }
}

fn firewall_section(out: &mut String, plan: &Plan) {
    let creates = plan
        .changes
        .iter()
        .any(|c| matches!(c.action, Action::Create | Action::Replace));
    if plan.firewall.len() < 2 || !creates {
        return;
    }
    let _ = writeln!(
        out,
        "Firewall: each host must accept TCP from the other cluster hosts on:"
    );
    for fw in &plan.firewall {
        let list: Vec<String> = fw
            .openings
            .iter()
            .map(|o| {
                if o.first == o.last {
                    format!("{} ({})", o.first, o.what)
                } else {
                    format!("{}-{} ({})", o.first, o.last, o.what)
                }
            })
            .collect();
        let _ = writeln!(out, "  {}: {}", fw.host, list.join(", "));
    }
    let _ = writeln!(out);
}

/// Text for a markdown table cell: as [`md_text`], and no `|`.
fn md_cell(text: &str) -> String {
    md_text(text).replace('|', "\\|")
}

/// Text outside code blocks: bounded, on one line, control characters
/// escaped, and `<` and `>` made inert so that a value cannot open raw HTML
/// in a pull-request comment (values inside it were excerpted, which turns
/// their backticks into quotes, so they cannot close a code span either).
fn md_text(text: &str) -> String {
    text.replace('\n', " ")
        .chars()
        .take(2000)
        .collect::<String>()
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Markdown for a pull request: the summary first, one collapsible section
/// per host, under [`MARKDOWN_LIMIT`] characters.
pub fn markdown(plan: &Plan) -> String {
    let summary = plan.summary();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### seedcore plan: cluster `{}`{}",
        plan.cluster.name,
        match &plan.environment {
            Some(e) => format!(" (environment `{e}`)"),
            None => String::new(),
        }
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "**{}**", summary_line(summary));
    let _ = writeln!(out);
    if summary.is_empty() {
        let unchanged = plan
            .changes
            .iter()
            .filter(|c| c.action == Action::NoOp)
            .count();
        let _ = writeln!(
            out,
            "Nothing to apply: the {unchanged} node(s) on {} host(s) already run as configured.",
            plan.hosts.len()
        );
        let _ = writeln!(out);
    }
    if !plan.overrides.is_empty() {
        let _ = writeln!(
            out,
            "Overrides in force: {}",
            plan.overrides
                .iter()
                .map(|o| format!("`{o}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(out);
    }
    for n in &plan.notes {
        let _ = writeln!(out, "> {}", md_text(n));
        let _ = writeln!(out);
    }
    if let Some(p) = &plan.preflight {
        let failed = p.failures().count();
        let _ = writeln!(
            out,
            "<details><summary>Preflight: {}</summary>\n\n```\n{}```\n\n</details>\n",
            if p.skipped {
                "skipped".to_string()
            } else if failed == 0 {
                "every check passed".to_string()
            } else {
                format!("{failed} check(s) FAILED")
            },
            p.render().replace("```", "'''")
        );
    }
    if !summary.is_empty() {
        let _ = writeln!(out, "| node | host | action | cause |");
        let _ = writeln!(out, "|---|---|---|---|");
        let total = plan.effective().count();
        for (i, c) in plan.effective().enumerate() {
            // The table may take a third of the budget; the rest is per host.
            if out.len() > MARKDOWN_LIMIT / 3 {
                let _ = writeln!(out, "| … | | | and {} more change(s) |", total - i);
                break;
            }
            let _ = writeln!(
                out,
                "| `{}` | `{}` | {} {} | {} |",
                c.node,
                c.host,
                symbol(c.action),
                c.action.as_str(),
                md_cell(&match plan.interrupts.get(&c.node) {
                    Some(i) => format!("{}; interrupts: {}", c.cause(), i.describe()),
                    None => c.cause(),
                })
            );
        }
        let _ = writeln!(out);
    }
    if summary.is_empty() {
        // Nothing per host to show: the note above says it all.
        return out;
    }
    let mut hosts: Vec<HostName> = plan.hosts.iter().map(|h| h.host.clone()).collect();
    for c in &plan.changes {
        if !hosts.contains(&c.host) {
            hosts.push(c.host.clone());
        }
    }
    let mut sections = Vec::new();
    for host in hosts {
        let changes: Vec<&Change> = plan.effective().filter(|c| c.host == host).collect();
        let mut body = String::new();
        for c in &changes {
            change_block(&mut body, plan, c, Style::default());
        }
        let mut section = String::new();
        let _ = writeln!(
            section,
            "<details><summary><code>{host}</code>: {} change(s)</summary>\n",
            changes.len()
        );
        if changes.is_empty() {
            let _ = writeln!(section, "No changes on this host.\n");
        } else {
            // GitHub colours a diff line by its first character.
            let body: String = body
                .lines()
                .map(|l| {
                    let t = l.trim_start();
                    if t.starts_with('+') || t.starts_with('-') || t.starts_with('~') {
                        format!("{t}\n")
                    } else {
                        format!("{l}\n")
                    }
                })
                .collect();
            // Nothing in a value can close the code block.
            let _ = writeln!(section, "```diff\n{}```\n", body.replace("```", "'''"));
        }
        let _ = writeln!(section, "</details>\n");
        sections.push(section);
    }
    let notice = "\n_The plan is too long for a comment and was truncated: run `seedcore plan` for the whole of it._\n";
    for (i, s) in sections.iter().enumerate() {
        if out.len() + s.len() + notice.len() > MARKDOWN_LIMIT {
            let _ = write!(
                out,
                "{}",
                notice.replace(
                    "truncated:",
                    &format!("truncated after {i} of {} hosts:", sections.len())
                )
            );
            return out;
        }
        out.push_str(s);
    }
    out
}

fn change_json(c: &Change) -> Value {
    let mut v = json!({
        "node": c.node,
        "host": c.host,
        "role": c.role,
        "action": c.action.as_str(),
        "reason": c.reason,
        "cause": c.cause(),
    });
    if let Some(b) = &c.before {
        v["before"] = json!(b);
    }
    if let Some(a) = &c.after {
        v["after"] = json!({
            "image": a.image,
            "args": a.ray_start,
            "command": a.command,
            "cpus": a.cpus,
            "node_ip": a.node_ip,
            "shm_size": human_bytes(a.shm_size_bytes),
            "env": a.env,
            "secret_env": a.secret_env,
            "ports": a.ports,
            "network_mode": a.network_mode,
            "restart_policy": a.restart_policy,
            "spec_hash": a.spec_hash(),
        });
    }
    if !c.fields.is_empty() {
        v["fields"] = json!(c.fields);
    }
    v
}

/// The plan as versioned JSON.
pub fn json_value(plan: &Plan) -> Value {
    let steps: Vec<Value> = plan
        .graph
        .numbered()
        .into_iter()
        .map(|s| {
            let mut v = json!(s.step);
            v["id"] = json!(s.number);
            v["after"] = json!(s.after);
            v
        })
        .collect();
    let mut v = json!({
        "format_version": JSON_FORMAT,
        "cluster": plan.cluster,
        "summary": plan.summary(),
        "overrides": plan.overrides,
        "hosts": plan.hosts,
        "notes": plan.notes,
        "changes": plan.effective().map(|c| {
            let mut v = change_json(c);
            if let Some(i) = plan.interrupts.get(&c.node) {
                v["interrupts"] = json!(i);
            }
            v
        }).collect::<Vec<_>>(),
        "unchanged": plan.changes.iter().filter(|c| c.action == Action::NoOp).map(|c| &c.node).collect::<Vec<_>>(),
        "steps": steps,
        "other_clusters": plan.others,
        "preflight": plan.preflight,
        "fingerprint": plan.fingerprint.iter().map(|(h, f)| (h.as_str(), f.digest())).collect::<std::collections::BTreeMap<_, _>>(),
    });
    if let Some(e) = &plan.environment {
        v["environment"] = json!(e);
    }
    v
}

/// The plan as pretty JSON with a trailing newline.
pub fn json(plan: &Plan) -> String {
    let mut s = serde_json::to_string_pretty(&json_value(plan)).expect("plan JSON serializes");
    s.push('\n');
    s
}

/// The step graph in Graphviz DOT.
pub fn dot(plan: &Plan) -> String {
    let mut out = String::from("digraph seedcore {\n  rankdir=LR;\n  node [shape=box];\n");
    let steps = plan.graph.numbered();
    for s in &steps {
        let label = format!("{}\n{}", step_label(s.step), s.step.host());
        let _ = writeln!(out, "  s{} [label={label:?}];", s.number);
    }
    for s in &steps {
        for from in &s.after {
            let _ = writeln!(out, "  s{from} -> s{};", s.number);
        }
    }
    out.push_str("}\n");
    out
}

/// The step graph as a mermaid flowchart.
pub fn mermaid(plan: &Plan) -> String {
    let mut out = String::from("flowchart LR\n");
    let steps = plan.graph.numbered();
    for s in &steps {
        let _ = writeln!(
            out,
            "  s{}[\"{}<br/>{}\"]",
            s.number,
            step_label(s.step).replace('"', "'"),
            s.step.host()
        );
    }
    for s in &steps {
        for from in &s.after {
            let _ = writeln!(out, "  s{from} --> s{}", s.number);
        }
    }
    out
}
