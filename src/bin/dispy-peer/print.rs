//! How `submit` and `nodes` print: for people by default, JSON lines with `--json`.
//!
//! Text a node sends (its name, a job's output, error messages) goes to a person's terminal
//! only through [`clean`]: a node could otherwise send escape sequences that rewrite the
//! screen, set the window title or, on some terminals, type into the shell. JSON escapes
//! control characters itself.

use dispy::{FoundNode, JobOutcome, JobReport, JobStatus, Stats};
use std::borrow::Cow;
use std::io::{self, Write};

pub(crate) struct Printer {
    json: bool,
    out: io::BufWriter<io::Stdout>,
}

impl Printer {
    pub(crate) fn new(json: bool) -> Self {
        Printer { json, out: io::BufWriter::new(io::stdout()) }
    }

    pub(crate) fn job(&mut self, job: &JobReport) -> io::Result<()> {
        if self.json {
            let (exit_code, signal, error) = match &job.outcome {
                JobOutcome::Exited(c) => (Some(*c), None, None),
                JobOutcome::Signaled(s) => (None, Some(*s), None),
                other => (None, None, Some(other.to_string())),
            };
            let v = serde_json::json!({
                "job": job.id.0,
                "args": job.args,
                "status": JobStatus::of(&job.outcome).as_str(),
                "exit_code": exit_code,
                "signal": signal,
                "error": error,
                "node": job.node.as_ref().map(|n| n.name.clone()),
                "node_peer_id": job.node.as_ref().map(|n| n.peer_id.to_string()),
                "node_ip": job.node.as_ref().and_then(|n| n.ip.map(|i| i.to_string())),
                "start_us": job.start_us,
                "end_us": job.end_us,
                "run_secs": job.run_time().as_secs_f64(),
                "stdout": String::from_utf8_lossy(&job.stdout),
                "stdout_truncated": job.stdout_truncated,
                "stderr": String::from_utf8_lossy(&job.stderr),
                "stderr_truncated": job.stderr_truncated,
                "returned": job.returned,
                "return_note": job.return_note,
            });
            writeln!(self.out, "{v}")?;
        } else {
            let node = job.node.as_ref().map_or("-".to_string(), |n| match &n.ip {
                Some(ip) => format!("{} ({ip})", n.name),
                None => n.name.clone(),
            });
            let line = format!(
                "== job {} [{}] on {node}: {} in {:.3} s",
                job.id,
                shell_words::join(&job.args),
                job.outcome,
                job.run_time().as_secs_f64()
            );
            writeln!(self.out, "{}", clean_str(&line))?;
            self.out.write_all(&clean(&job.stdout))?;
            ensure_newline(&mut self.out, &job.stdout)?;
            if job.stdout_truncated > 0 {
                writeln!(
                    self.out,
                    "[... {} more bytes of stdout dropped by the node's --max-output]",
                    job.stdout_truncated
                )?;
            }
            if !job.stderr.is_empty() || job.stderr_truncated > 0 {
                writeln!(self.out, "-- stderr --")?;
                self.out.write_all(&clean(&job.stderr))?;
                ensure_newline(&mut self.out, &job.stderr)?;
                if job.stderr_truncated > 0 {
                    writeln!(
                        self.out,
                        "[... {} more bytes of stderr dropped by the node's --max-output]",
                        job.stderr_truncated
                    )?;
                }
            }
            for path in &job.returned {
                writeln!(self.out, "-- returned {}", path.display())?;
            }
            if let Some(note) = &job.return_note {
                writeln!(self.out, "-- not returned: {}", clean_str(note))?;
            }
        }
        self.out.flush()
    }

    /// Jobs that `recover` found nowhere.
    pub(crate) fn lost(&mut self, lost: &[(dispy::JobId, Vec<String>)]) -> io::Result<()> {
        for (id, args) in lost {
            if self.json {
                writeln!(self.out, "{}", serde_json::json!({"lost": id.0, "args": args}))?;
            } else {
                writeln!(
                    self.out,
                    "== job {id} [{}]: lost (no node holds its result); resubmit it",
                    shell_words::join(args)
                )?;
            }
        }
        if !self.json {
            writeln!(self.out, "{} lost", count(lost.len(), "job"))?;
        }
        self.out.flush()
    }

    /// The per-node figures and the jobs counted by how they ended; `total`: jobs
    /// submitted; `bad_lines`: args-file lines that ran no job (already named on stderr, so
    /// only the JSON summary counts them).
    pub(crate) fn summary(&mut self, stats: &Stats, total: usize, tally: &Tally, bad_lines: usize) -> io::Result<()> {
        let not_ok = tally.total() - tally.count(JobStatus::Finished);
        if self.json {
            let statuses: serde_json::Map<String, serde_json::Value> =
                tally.by_status.iter().map(|(s, n)| (s.as_str().to_string(), (*n).into())).collect();
            let v = serde_json::json!({
                "summary": stats,
                // The jobs' run time over the wall time (null when too short to tell).
                "speedup": stats.speedup(),
                "jobs": total,
                "reported": tally.total(),
                "failed": not_ok,
                "statuses": statuses,
                "bad_lines": bad_lines,
            });
            writeln!(self.out, "{v}")?;
        } else {
            writeln!(self.out)?;
            writeln!(self.out, "{}", clean_str(&stats.to_string()))?;
            if not_ok > 0 {
                let parts: Vec<String> = tally
                    .by_status
                    .iter()
                    .filter(|(s, _)| **s != JobStatus::Finished)
                    .map(|(s, n)| format!("{n} {}", s.as_str()))
                    .collect();
                writeln!(self.out, "{not_ok} of {} did not succeed ({})", count(total, "job"), parts.join(", "))?;
            }
        }
        self.out.flush()
    }
}

/// Jobs reported, counted by how they ended.
#[derive(Default)]
pub(crate) struct Tally {
    by_status: std::collections::BTreeMap<JobStatus, usize>,
}

impl Tally {
    pub(crate) fn add(&mut self, job: &JobReport) {
        *self.by_status.entry(JobStatus::of(&job.outcome)).or_default() += 1;
    }

    pub(crate) fn count(&self, status: JobStatus) -> usize {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    pub(crate) fn total(&self) -> usize {
        self.by_status.values().sum()
    }

    /// Jobs that reached a node and ended there (whatever their outcome).
    pub(crate) fn ran(&self) -> usize {
        self.total() - self.count(JobStatus::NotRun) - self.count(JobStatus::Cancelled)
    }

    pub(crate) fn all_succeeded(&self) -> bool {
        self.count(JobStatus::Finished) == self.total()
    }
}

/// `1 job`, `2 jobs`: [`dispy::report::count`] of a local count.
pub(crate) fn count(n: usize, noun: &str) -> String {
    dispy::report::count(u64::try_from(n).unwrap_or(u64::MAX), noun)
}

fn ensure_newline(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    if !bytes.is_empty() && !bytes.ends_with(b"\n") {
        writeln!(out)?;
    }
    Ok(())
}

pub(crate) fn nodes(found: &[FoundNode], json: bool) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for n in found {
        if json {
            writeln!(out, "{}", serde_json::to_string(n).map_err(io::Error::other)?)?;
        } else {
            let line = format!(
                "{}  {}  {}  cpus {}/{} free  {}/{}  v{}  {}",
                n.name, n.peer_id, n.addr, n.free_cpus, n.cpus, n.os, n.arch, n.version, n.reach
            );
            writeln!(out, "{}", clean_str(&line))?;
        }
    }
    Ok(())
}

/// `status`: a line per node with what it is doing and has free (`-` where a node does not
/// say: an older node, or a figure it cannot read).
pub(crate) fn status(found: &[FoundNode]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(
        out,
        "{:<24} {:>9} {:>7} {:>7} {:>6} {:>10} {:>10}",
        "node", "cpus busy", "clients", "queued", "load", "mem free", "disk free"
    )?;
    let dash = || "-".to_string();
    for n in found {
        let busy = format!("{}/{}", n.cpus.saturating_sub(n.free_cpus), n.cpus);
        let (clients, queued, load, mem, disk) = match &n.load {
            Some(l) => (
                l.clients.to_string(),
                l.jobs_queued.to_string(),
                l.load_avg.map_or_else(dash, |a| format!("{a:.2}")),
                l.memory_free_bytes.map_or_else(dash, dispy::report::human_bytes),
                l.disk_free_bytes.map_or_else(dash, dispy::report::human_bytes),
            ),
            None => (dash(), dash(), dash(), dash(), dash()),
        };
        let line = format!("{:<24} {busy:>9} {clients:>7} {queued:>7} {load:>6} {mem:>10} {disk:>10}", n.name);
        writeln!(out, "{}", clean_str(&line))?;
    }
    Ok(())
}

/// `bytes` with every terminal control character shown as a visible `\xNN` escape instead
/// of acting: C0 controls but tab and newline (and a carriage return before a newline),
/// DEL, and the C1 controls (`U+0080`-`U+009F`, two bytes in UTF-8), which include the CSI
/// and OSC introducers. Everything else, invalid UTF-8 included, passes unchanged; text
/// with nothing to clean is not copied.
fn clean(bytes: &[u8]) -> Cow<'_, [u8]> {
    let is_c1 = |i: usize| bytes[i] == 0xc2 && bytes.get(i + 1).is_some_and(|b| (0x80..=0x9f).contains(b));
    let acts = |i: usize| match bytes[i] {
        b'\n' | b'\t' => false,
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        b => b < 0x20 || b == 0x7f || is_c1(i),
    };
    if !(0..bytes.len()).any(acts) {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len() + 16);
    let mut i = 0;
    while i < bytes.len() {
        if is_c1(i) {
            out.extend_from_slice(format!("\\x{:02x}", bytes[i + 1]).as_bytes());
            i += 2;
            continue;
        }
        if acts(i) {
            out.extend_from_slice(format!("\\x{:02x}", bytes[i]).as_bytes());
        } else {
            out.push(bytes[i]);
        }
        i += 1;
    }
    Cow::Owned(out)
}

/// [`clean`] for text.
fn clean_str(text: &str) -> Cow<'_, str> {
    match clean(text.as_bytes()) {
        Cow::Borrowed(_) => Cow::Borrowed(text),
        // Only ASCII escapes replaced whole characters: still UTF-8.
        Cow::Owned(bytes) => Cow::Owned(String::from_utf8_lossy(&bytes).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_controls_are_shown_not_acted_on() {
        assert!(matches!(clean(b"plain text\twith tabs\r\nand lines\n"), Cow::Borrowed(_)));
        assert_eq!(&*clean(b"\x1b]0;owned\x07title"), b"\\x1b]0;owned\\x07title");
        assert_eq!(&*clean(b"a\x1b[2Jb\rc\x7f"), b"a\\x1b[2Jb\\x0dc\\x7f");
        assert_eq!(&*clean("csi \u{9b}31m".as_bytes()), b"csi \\x9b31m", "C1 CSI in UTF-8");
        assert_eq!(&*clean("caf\u{e9} \u{2603}".as_bytes()), "caf\u{e9} \u{2603}".as_bytes());
        assert_eq!(&*clean(b"raw \xff\xfe bytes"), b"raw \xff\xfe bytes");
        assert_eq!(clean_str("node \x1b[31mred"), "node \\x1b[31mred");
    }
}
