//! The page: `page.html` (styles and a small script inline: no build step, nothing fetched
//! from elsewhere, so it works offline), filled in on the server with the view at the time
//! of the request. The script then keeps it live from `/events`, rendering rows as this
//! file does.

use super::state::{JobRow, NodeRow, View};
use crate::report::human_bytes;

const TEMPLATE: &str = include_str!("page.html");

/// The page for `view`; `token`: the cancel token, for a page opened with it.
pub(crate) fn render(view: &View, token: Option<&str>) -> String {
    let c = &view.counts;
    let done = c.done();
    let percent = (done * 100).checked_div(c.total).unwrap_or(0);
    let nodes: String = view.nodes.iter().map(|n| node_row(n, view.now_ms)).collect();
    let jobs: String = view.jobs.iter().map(|r| job_row(r, token.is_some())).collect();
    let host = crate::host_name();
    let fills = [
        ("{{TOKEN}}", esc(token.unwrap_or(""))),
        ("{{HOST}}", esc(&host)),
        ("{{STATE}}", if view.ended { "run ended" } else { "connecting…" }.into()),
        ("{{DONE}}", done.to_string()),
        ("{{TOTAL}}", c.total.to_string()),
        ("{{QUEUED}}", c.queued.to_string()),
        ("{{RUNNING}}", c.running.to_string()),
        ("{{FINISHED}}", c.finished.to_string()),
        ("{{FAILED}}", c.failed.to_string()),
        ("{{CANCELLED}}", c.cancelled.to_string()),
        ("{{STAGED}}", human_bytes(view.staged_bytes)),
        ("{{RETURNED}}", human_bytes(view.returned_bytes)),
        ("{{PERCENT}}", percent.to_string()),
        ("{{NODES}}", nodes),
        ("{{JOBS}}", jobs),
        ("{{DISABLED}}", if token.is_some() { "" } else { "disabled" }.into()),
    ];
    let mut page = TEMPLATE.to_string();
    for (mark, value) in fills {
        page = page.replace(mark, &value);
    }
    page
}

fn node_row(n: &NodeRow, now_ms: u64) -> String {
    let ago = now_ms.saturating_sub(n.last_seen_ms) / 1000;
    let seen = if ago < 2 { "now".to_string() } else { format!("{ago} s ago") };
    format!(
        "<tr data-node=\"{name}\"><td>{name}</td><td>{addr}</td><td>{cpus}</td><td><span class=\"badge\">{status}</span></td>\
         <td>{running}</td><td>{done}</td><td>{secs:.2} s</td><td>{staged}</td><td>{seen}</td></tr>",
        name = esc(&n.name),
        addr = esc(&n.address),
        cpus = n.cpus,
        status = esc(&n.status),
        running = n.jobs_running,
        done = n.jobs_done,
        secs = n.cpu_secs,
        staged = human_bytes(n.staged_bytes),
    )
}

fn job_row(r: &JobRow, can_cancel: bool) -> String {
    let time = match (r.start_ms, r.end_ms) {
        (Some(s), Some(e)) => format!("{:.2} s", e.saturating_sub(s) as f64 / 1000.0),
        _ => String::new(),
    };
    let button = if matches!(r.status, "created" | "running") {
        let disabled = if can_cancel { "" } else { " disabled" };
        format!("<button class=\"danger\" data-cancel=\"{}\"{disabled}>Cancel</button>", r.id)
    } else {
        String::new()
    };
    format!(
        "<tr data-job=\"{id}\" data-status=\"{status}\"><td>{id}</td><td class=\"status\"><span class=\"badge\">{status}</span></td>\
         <td>{node}</td><td>{args}</td><td></td><td>{time}</td><td>{exit}</td><td class=\"out\">{out}</td><td>{button}</td></tr>",
        id = r.id,
        status = r.status,
        node = esc(r.node.as_deref().unwrap_or("")),
        args = esc(&r.args),
        exit = esc(r.exit.as_deref().unwrap_or("")),
        out = esc(&r.stdout),
    )
}

/// Text made safe inside HTML elements and quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(ch),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::web::state::Monitor;

    #[test]
    fn the_page_escapes_what_jobs_print_and_carries_the_token_only_when_given() {
        let mut view = Monitor::new(0).full(0);
        view.jobs.push(JobRow {
            id: 3,
            status: "finished",
            node: Some("w<1>".into()),
            args: "a\"b".into(),
            start_ms: Some(1000),
            end_ms: Some(3500),
            exit: Some("exit 0".into()),
            stdout: "<script>alert(1)</script>".into(),
        });
        let page = render(&view, Some("abc123"));
        assert!(page.contains("data-token=\"abc123\""));
        assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(page.contains("w&lt;1&gt;") && page.contains("a&quot;b") && page.contains("2.50 s"));
        assert!(!page.contains("{{"), "a mark left unfilled");
        assert!(render(&view, None).contains("data-token=\"\""));
    }
}
