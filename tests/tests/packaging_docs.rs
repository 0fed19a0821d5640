//! The man pages and shell completions in `packaging/` are what the code
//! produces (`cmapp-docgen`, from the binaries' clap definitions): a new
//! option or subcommand without `packaging/generate.sh` fails here. The pages and
//! completions themselves work: man renders them without warnings, bash and
//! fish complete subcommands, zsh parses its functions.

use std::path::{Path, PathBuf};
use std::process::Command;

use cmapp_tests::bin;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn generate(dir: &Path) -> Vec<PathBuf> {
    let out = Command::new(bin("cmapp-docgen")).arg(dir).output().unwrap();
    assert!(
        out.status.success(),
        "cmapp-docgen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| Path::new(l).strip_prefix(dir).unwrap().to_path_buf())
        .collect()
}

#[test]
fn committed_pages_and_completions_are_what_the_code_produces() {
    let tmp = tempfile::tempdir().unwrap();
    let mut stale = Vec::new();
    let files = generate(tmp.path());
    for binary in ["cmappmgr", "cmappserver"] {
        let own: Vec<_> = files
            .iter()
            .filter(|f| {
                f.file_stem()
                    .and_then(|s| s.to_str())
                    .map(|s| s.trim_start_matches('_'))
                    == Some(binary)
            })
            .collect();
        assert_eq!(own.len(), 4, "a man page and three completions for {binary}: {files:?}");
    }
    assert_eq!(files.len(), 8, "{files:?}");
    for rel in files {
        let fresh = std::fs::read(tmp.path().join(&rel)).unwrap();
        let committed = std::fs::read(repo().join("packaging").join(&rel)).unwrap_or_default();
        if fresh != committed {
            stale.push(format!("packaging/{}", rel.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "{} differ from what the code produces: run packaging/generate.sh and commit the result",
        stale.join(", ")
    );
}

fn page(name: &str) -> String {
    std::fs::read_to_string(repo().join("packaging/man").join(format!("{name}.1"))).unwrap()
}

#[test]
fn each_page_has_every_subcommand_exit_codes_keys_and_files() {
    let mgr = page("cmappmgr");
    for needle in [
        ".SS \"cmappmgr check\"",
        ".SS \"cmappmgr status\"",
        ".SS \"cmappmgr keygen issue\"",
        ".SS \"cmappmgr vm start\"",
        ".SS \"cmappmgr vm monitor\"",
        ".SS \"cmappmgr vm maintenance\"",
        ".SS \"cmappmgr demo\"",
        "\\-\\-service",
        ".SH \"EXIT STATUS\"",
        ".SH CONFIGURATION",
        ".SH FILES",
    ] {
        assert!(mgr.contains(needle), "cmappmgr.1 lacks {needle}");
    }
    for (key, ..) in common::config::MANAGER_KEY_DOCS {
        assert!(
            mgr.contains(&format!("\\fB{key}\\fR")),
            "cmappmgr.1 lacks the key {key}"
        );
    }
    let srv = page("cmappserver");
    for needle in [
        ".SS \"cmappserver keygen\"",
        ".SS \"cmappserver net-mon\"",
        "\\-\\-check\\-config",
        "\\-\\-pid\\-file",
        ".SH \"EXIT STATUS\"",
        ".SH KEYS",
        ".SH FILES",
    ] {
        assert!(srv.contains(needle), "cmappserver.1 lacks {needle}");
    }
    for hidden in ["cmappserver shim", "cmappserver generate"] {
        assert!(!srv.contains(hidden), "the internal command {hidden} is documented");
    }
    assert!(
        !mgr.contains("cmappmgr generate"),
        "the internal generate command is documented"
    );
    for (key, ..) in common::config::SERVER_KEY_DOCS {
        assert!(
            srv.contains(&format!("\\fB{key}\\fR")),
            "cmappserver.1 lacks the key {key}"
        );
    }
}

#[test]
fn man_renders_the_pages_without_warnings() {
    for name in ["cmappmgr", "cmappserver"] {
        let path = repo().join("packaging/man").join(format!("{name}.1"));
        let out = Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l"])
            .arg(&path)
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .expect("man (the man-db package)");
        assert!(out.status.success(), "man {name}: {:?}", out.status);
        let warnings = String::from_utf8_lossy(&out.stderr);
        assert!(warnings.trim().is_empty(), "man {name} warns:\n{warnings}");
        // Bold is overstrike ("E\x08E") when man writes to a pipe.
        let mut text = String::new();
        for c in String::from_utf8_lossy(&out.stdout).chars() {
            if c == '\x08' {
                text.pop();
            } else {
                text.push(c);
            }
        }
        assert!(text.contains("EXIT STATUS"), "man {name} did not render the page");
    }
}

/// Words bash completes for `line` (the last word being completed).
fn bash_complete(script: &Path, func: &str, line: &[&str]) -> Vec<String> {
    let words = line.iter().map(|w| format!("'{w}'")).collect::<Vec<_>>().join(" ");
    let prog = format!(
        "source '{}'; COMP_WORDS=({words}); COMP_CWORD={}; COMP_LINE='{}'; COMP_POINT=${{#COMP_LINE}}; \
         {func} {} '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        script.display(),
        line.len() - 1,
        line.join(" "),
        line[0],
        line[line.len() - 1],
        line[line.len() - 2],
    );
    let out = Command::new("bash").arg("-c").arg(prog).output().expect("bash");
    assert!(out.status.success(), "bash: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn bash_completes_subcommands_and_options() {
    let c = repo().join("packaging/completions");
    let words = bash_complete(&c.join("cmappmgr.bash"), "_cmappmgr", &["cmappmgr", "vm", "st"]);
    assert!(
        words.contains(&"start".into()) && words.contains(&"stop".into()),
        "{words:?}"
    );
    let words = bash_complete(&c.join("cmappmgr.bash"), "_cmappmgr", &["cmappmgr", "--cmappserver"]);
    assert!(words.contains(&"--cmappserver_timeout".into()), "{words:?}");
    let words = bash_complete(&c.join("cmappserver.bash"), "_cmappserver", &["cmappserver", "--check"]);
    assert_eq!(words, ["--check-config"]);
}

#[test]
fn fish_completes_subcommands_and_zsh_parses_its_functions() {
    let c = repo().join("packaging/completions");
    let out = Command::new("fish")
        .arg("-c")
        .arg(format!(
            "source '{}'; complete -C 'cmappmgr vm st'",
            c.join("cmappmgr.fish").display()
        ))
        .output()
        .expect("fish (the fish package; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("start")), "fish: {text}");
    for f in ["_cmappmgr", "_cmappserver"] {
        let out = Command::new("zsh")
            .arg("-n")
            .arg(c.join(f))
            .output()
            .expect("zsh (the zsh package; .ci/run installs it)");
        assert!(
            out.status.success(),
            "zsh -n {f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
