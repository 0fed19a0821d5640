//! `cmapp-docgen DIR`: writes the man pages and shell completions of
//! cmappmgr and cmappserver, generated from their clap definitions, as
//! `DIR/man/NAME.1` and `DIR/completions/{NAME.bash,_NAME,NAME.fish}`, and
//! prints the paths written. `packaging/generate.sh` runs it into
//! `packaging/`, where the packages take them from; a test
//! (`tests/tests/packaging_docs.rs`) fails when the committed files differ
//! from what it produces, so a new option cannot be missing from the pages.
//!
//! The page is clap_mangen's sections (NAME, SYNOPSIS, DESCRIPTION, OPTIONS),
//! then every visible subcommand, recursively, with its own synopsis and
//! options (one page per binary), then the sections clap does not know
//! about (`common::docs::Section`: exit status, configuration keys, files,
//! ...).
//!
//! A separate program rather than a hidden command of each binary: the
//! generators' code would otherwise be part of the binaries' text, which
//! every idle cmappmgr maps (see BENCHMARKS.md, "cmappmgr < 6 MB").

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Command;
use clap_complete::{Generator, Shell};
use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use common::docs::Section;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: cmapp-docgen DIR   (writes DIR/man/*.1 and DIR/completions/*)");
        return ExitCode::from(64);
    };
    let dir = PathBuf::from(dir);
    for (cmd, sections) in [appmgr::docs(), appserver::docs()] {
        match write_all(&cmd, &sections, &dir) {
            Ok(paths) => {
                for p in paths {
                    println!("{}", p.display());
                }
            }
            Err(e) => {
                eprintln!(
                    "cmapp-docgen: cannot write {}'s pages to {}: {e}",
                    cmd.get_name(),
                    dir.display()
                );
                return ExitCode::from(1);
            }
        }
    }
    ExitCode::SUCCESS
}

/// The shells completions are written for.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Renders the whole man page of `cmd`.
fn man_page(mut cmd: Command, sections: &[Section]) -> io::Result<Vec<u8>> {
    cmd.build();
    let man = Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    let subs: Vec<&Command> = visible_subcommands(&cmd).collect();
    if !subs.is_empty() {
        let mut r = Roff::new();
        r.control("SH", ["COMMANDS"]);
        r.to_writer(&mut out)?;
        for sub in subs {
            render_subcommand(sub, &mut out)?;
        }
    }
    for s in sections {
        render_section(s, &mut out)?;
    }
    man.render_version_section(&mut out)?;
    Ok(out)
}

fn visible_subcommands(cmd: &Command) -> impl Iterator<Item = &Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// One subcommand: `.SS` with its full name, synopsis, description and
/// options (clap_mangen's section headings dropped), then its own subcommands.
fn render_subcommand(sub: &Command, out: &mut Vec<u8>) -> io::Result<()> {
    let name = sub.get_bin_name().unwrap_or(sub.get_name()).to_string();
    let man = Man::new(sub.clone());
    let mut r = Roff::new();
    r.control("SS", [name.as_str()]);
    r.to_writer(out)?;
    let mut body = Vec::new();
    man.render_synopsis_section(&mut body)?;
    man.render_description_section(&mut body)?;
    if sub.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut body)?;
    }
    let body = String::from_utf8_lossy(&body);
    for line in body.lines() {
        if line.starts_with(".SH ") {
            // Keep the layout readable: a paragraph break instead of a heading.
            out.extend_from_slice(b".PP\n");
        } else {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
    }
    for s in visible_subcommands(sub) {
        render_subcommand(s, out)?;
    }
    Ok(())
}

fn render_section(s: &Section, out: &mut Vec<u8>) -> io::Result<()> {
    let mut r = Roff::new();
    r.control("SH", [s.title.to_uppercase().as_str()]);
    for (i, p) in s.paragraphs.iter().enumerate() {
        if i > 0 {
            r.control("PP", []);
        }
        r.text([roman(p.as_str())]);
    }
    for (tag, text) in &s.items {
        r.control("TP", []);
        r.text([bold(tag.as_str())]);
        r.text([roman(text.as_str())]);
    }
    r.to_writer(out)
}

/// The completion script of `cmd` for `shell`.
fn completion(cmd: &Command, shell: Shell) -> Vec<u8> {
    let mut cmd = cmd.clone();
    let name = cmd.get_name().to_string();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut out);
    out
}

/// Every generated file: its path under the output directory and its text.
fn files(cmd: &Command, sections: &[Section]) -> io::Result<Vec<(PathBuf, Vec<u8>)>> {
    let name = cmd.get_name().to_string();
    let mut files = vec![(
        Path::new("man").join(format!("{name}.1")),
        man_page(cmd.clone(), sections)?,
    )];
    for shell in SHELLS {
        files.push((
            Path::new("completions").join(shell.file_name(&name)),
            completion(cmd, shell),
        ));
    }
    Ok(files)
}

/// Writes every generated file under `dir`; returns the paths written.
fn write_all(cmd: &Command, sections: &[Section], dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for (rel, text) in files(cmd, sections)? {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}
