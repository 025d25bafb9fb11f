//! Where `submit`'s jobs come from: the `-a` options, then the lines of `--args-file`.
//!
//! An args file may hold millions of lines, so it is never read whole: a thread of its own
//! reads it (a blocking read of a slow stdin must not stall the printing of results) and
//! hands batches over a channel of one slot; `submit` takes a batch only while few enough
//! jobs are outstanding (see [`MAX_OUTSTANDING`]), so reading follows the results.

use anyhow::Context;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use tokio::sync::mpsc;

/// Most jobs handed over at once: big enough that a batch costs one message to the
/// scheduler and one dispatch pass per few thousand jobs, small enough to be a few
/// hundred kilobytes.
pub(crate) const BATCH: usize = 2048;

/// Most jobs submitted and not yet reported. Four batches: while the nodes work through
/// one, three more wait queued at the scheduler, so the nodes never idle waiting for the
/// reader to catch up, and the client holds at most this many jobs (a few MB) however long
/// the file. (A node takes at most a few jobs per CPU at a time, so this still keeps a few
/// hundred CPUs busy; beyond that the batches just turn over faster.)
pub(crate) const MAX_OUTSTANDING: usize = 4 * BATCH;

/// What is read ahead of the jobs that run: the next batch, besides the one in the
/// channel's slot. Larger than one line of a typical file by far, so the reader hands over
/// whole batches unless the input really is slow (a pipe written bit by bit).
const READ_BUFFER: usize = 64 << 10;

/// Jobs read, and how many lines ran no job (each already named on stderr).
pub(crate) struct Batch {
    pub(crate) jobs: Vec<Vec<String>>,
    pub(crate) bad_lines: usize,
}

/// An args file, opened (so that an unreadable one fails before any node is contacted).
pub(crate) struct ArgsFile {
    /// As the user named it (`-` shows as `<stdin>`), for messages.
    name: String,
    reader: BufReader<Box<dyn Read + Send>>,
}

impl ArgsFile {
    /// Opens `path`; `-` is stdin.
    pub(crate) fn open(path: &Path) -> anyhow::Result<ArgsFile> {
        if path == Path::new("-") {
            let reader: Box<dyn Read + Send> = Box::new(std::io::stdin());
            return Ok(ArgsFile { name: "<stdin>".into(), reader: BufReader::with_capacity(READ_BUFFER, reader) });
        }
        let name = path.display().to_string();
        let file = File::open(path).with_context(|| format!("cannot read --args-file {name}"))?;
        // Opening a directory succeeds; reading it would fail only once jobs are running.
        if file.metadata().with_context(|| format!("cannot read --args-file {name}"))?.is_dir() {
            anyhow::bail!("cannot read --args-file {name}: it is a directory");
        }
        let reader: Box<dyn Read + Send> = Box::new(file);
        Ok(ArgsFile { name, reader: BufReader::with_capacity(READ_BUFFER, reader) })
    }

    /// The file as the user named it, for messages.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Starts reading on a thread of its own; batches come from the receiver, which
    /// closes at the end of the file. Dropping the receiver stops the reading (at the next
    /// batch).
    pub(crate) fn spawn(self) -> anyhow::Result<mpsc::Receiver<Batch>> {
        // One slot: with the batch being filled, the reader is at most two batches ahead.
        let (tx, rx) = mpsc::channel(1);
        std::thread::Builder::new()
            .name("args-file".into())
            .spawn(move || self.read(&tx))
            .context("cannot start the thread reading --args-file")?;
        Ok(rx)
    }

    fn read(mut self, tx: &mpsc::Sender<Batch>) {
        let mut batch = Batch { jobs: Vec::new(), bad_lines: 0 };
        let mut line = Vec::new();
        let mut number = 0u64;
        loop {
            line.clear();
            match self.reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    eprintln!("dispy-peer: {}: cannot read past line {number}: {e}", self.name);
                    batch.bad_lines += 1;
                    break;
                }
            }
            number += 1;
            match split(&line) {
                Ok(Some(words)) => batch.jobs.push(words),
                Ok(None) => {}
                Err(why) => {
                    eprintln!("dispy-peer: {}:{number}: {why}; this line runs no job", self.name);
                    batch.bad_lines += 1;
                }
            }
            // Hand over a full batch, or what is at hand when reading on would wait for
            // the input (a pipe written slowly): its jobs start now, not at the next line.
            let would_wait = self.reader.buffer().is_empty();
            if batch.jobs.len() >= BATCH || (would_wait && !batch.jobs.is_empty()) {
                let full = std::mem::replace(&mut batch, Batch { jobs: Vec::with_capacity(BATCH), bad_lines: 0 });
                if tx.blocking_send(full).is_err() {
                    return;
                }
            }
        }
        if !batch.jobs.is_empty() || batch.bad_lines > 0 {
            let _ = tx.blocking_send(batch);
        }
    }
}

/// One line's words; `None` for a line with none (blank, or only a `#` comment).
fn split(line: &[u8]) -> Result<Option<Vec<String>>, String> {
    let line = std::str::from_utf8(line).map_err(|_| "not valid UTF-8".to_string())?;
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Ok(None);
    }
    match shell_words::split(line) {
        Ok(words) if words.is_empty() => Ok(None),
        Ok(words) => Ok(Some(words)),
        // The only way shell-words fails.
        Err(_) => Err("unbalanced quotes".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn lines_split_like_a_shell_and_blank_or_comment_lines_run_nothing() {
        assert_eq!(split(b"a 'b c' \"d e\"\n").unwrap(), Some(vec!["a".into(), "b c".into(), "d e".into()]));
        assert_eq!(split(b"x\\ y ''\r\n").unwrap(), Some(vec!["x y".into(), String::new()]));
        assert_eq!(split(b"   \n").unwrap(), None);
        assert_eq!(split(b"# a comment\n").unwrap(), None);
        assert_eq!(split(b"a 'b\n").unwrap_err(), "unbalanced quotes");
        assert_eq!(split(b"\xff\n").unwrap_err(), "not valid UTF-8");
    }
}
