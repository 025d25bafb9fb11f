//! The small comforts: shell completions and man pages generated from the options.

use crate::util::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn completions_generate_for_bash_zsh_and_fish_and_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let mut cmd = Command::new(bin());
        cmd.args(["completions", shell]);
        let out = run("completions", cmd, Duration::from_secs(10));
        out.expect_code(0);
        assert!(out.stdout.len() > 500, "{shell}: a short script:\n{}", out.stdout);
        for sub in ["serve", "submit", "nodes", "recover", "keygen", "--secret-file", "--each-file"] {
            assert!(out.stdout.contains(sub), "{shell}: {sub} missing:\n{}", out.stdout);
        }
    }
    // bash itself accepts the script, and it completes the subcommands.
    let mut cmd = Command::new(bin());
    cmd.args(["completions", "bash"]);
    let script = run("completions", cmd, Duration::from_secs(10)).stdout;
    let dir = tempdir();
    std::fs::write(dir.path().join("c.bash"), script).unwrap();
    let check = format!(
        // The function the script registers for dispy-peer, called as bash would on `dispy-peer su<TAB>`.
        ". {}/c.bash && f=$(complete -p dispy-peer | sed 's/.*-F \\([^ ]*\\).*/\\1/') && \
         COMP_WORDS=(dispy-peer su) COMP_CWORD=1 && $f dispy-peer su dispy-peer && echo \"${{COMPREPLY[@]}}\"",
        dir.path().display()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &check]);
    let out = run("bash", cmd, Duration::from_secs(10));
    out.expect_code(0);
    assert_eq!(out.stdout.trim(), "submit", "{}", out.stderr);

    let mut cmd = Command::new(bin());
    cmd.args(["completions", "tcsh-or-so"]);
    run("completions", cmd, Duration::from_secs(10)).expect_code(2);
}

#[test]
fn the_man_page_documents_every_subcommand() {
    let mut cmd = Command::new(bin());
    cmd.arg("manpage");
    let out = run("manpage", cmd, Duration::from_secs(10));
    out.expect_code(0);
    assert!(out.stdout.starts_with(".ie") || out.stdout.contains(".TH dispy-peer 1"), "{}", out.stdout);
    for sub in ["serve", "submit", "nodes", "recover", "completions"] {
        assert!(out.stdout.contains(sub), "{sub} missing:\n{}", out.stdout);
    }

    let dir = tempdir();
    let mut cmd = Command::new(bin());
    cmd.arg("manpage").arg("--dir").arg(dir.path());
    run("manpage", cmd, Duration::from_secs(10)).expect_code(0);
    let serve = std::fs::read_to_string(dir.path().join("dispy-peer-serve.1")).unwrap();
    assert!(serve.contains("drain") && serve.contains("secret"), "{serve}");
    assert!(dir.path().join("dispy-peer.1").exists());
}
