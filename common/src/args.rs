//! Small command-line rules both binaries share: the original's single-dash
//! long options (`-node x`, as its Java and Perl parsers took them) and
//! yes/no values.

/// Every long name and alias of `cmd`'s options (without the dashes), the
/// words that [`single_dash`] rewrites. Derived from the clap definitions, so
/// the rewriting cannot drift from the parser.
pub fn long_names(cmd: &clap::Command) -> Vec<String> {
    let mut names: Vec<String> = cmd
        .get_arguments()
        .flat_map(|a| a.get_long_and_visible_aliases().unwrap_or_default())
        .chain(
            cmd.get_arguments()
                .flat_map(|a| a.get_all_aliases().unwrap_or_default()),
        )
        .map(str::to_string)
        .collect();
    names.extend(["help", "version"].map(String::from));
    names.sort();
    names.dedup();
    names
}

/// `-lan eth0` → `--lan eth0` and `-lan=eth0` → `--lan=eth0` for the words
/// in `long` (see [`long_names`]); every other argument passes through, and
/// nothing after `--`.
pub fn single_dash<S: AsRef<str>>(args: Vec<String>, long: &[S]) -> Vec<String> {
    let mut options_done = false;
    args.into_iter()
        .map(|arg| {
            options_done |= arg == "--";
            if options_done {
                arg
            } else {
                single_dash_word(arg, long)
            }
        })
        .collect()
}

/// [`single_dash`] for one argument known to come before any `--`.
pub fn single_dash_word<S: AsRef<str>>(arg: String, long: &[S]) -> String {
    let word = arg.strip_prefix('-').filter(|rest| !rest.starts_with('-'));
    let name = word.map(|w| w.split('=').next().unwrap_or(w));
    if name.is_some_and(|n| long.iter().any(|l| l.as_ref() == n)) {
        format!("-{arg}")
    } else {
        arg
    }
}

/// A yes/no value as configuration files and cluster attributes write it:
/// `yes`/`y`/`true`/`on`/`1` and `no`/`n`/`false`/`off`/`0`, in any case.
pub fn yes_no(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "yes" | "y" | "true" | "on" | "1" => Some(true),
        "no" | "n" | "false" | "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn single_dash_words_become_long_options_until_the_double_dash() {
        let long = ["lan", "probe_count"];
        assert_eq!(
            single_dash(s(&["-lan", "x", "-probe_count=3", "-O", "--lan", "--", "-lan"]), &long),
            s(&["--lan", "x", "--probe_count=3", "-O", "--lan", "--", "-lan"])
        );
        // A second `--` is an operand like any other: it turns nothing back on.
        assert_eq!(single_dash(s(&["--", "--", "-lan"]), &long), s(&["--", "--", "-lan"]));
        assert_eq!(
            single_dash(s(&["-lan=eth0", "-other"]), &long),
            s(&["--lan=eth0", "-other"])
        );
    }

    #[test]
    fn long_names_come_from_the_definitions() {
        let cmd = clap::Command::new("t")
            .arg(clap::Arg::new("a").long("host_logfile").alias("host-logfile"))
            .arg(clap::Arg::new("b").short('O'));
        assert_eq!(
            long_names(&cmd),
            s(&["help", "host-logfile", "host_logfile", "version"])
        );
    }

    #[test]
    fn yes_and_no_in_every_spelling() {
        for y in ["yes", "Y", "TRUE", "on", "1", " yes "] {
            assert_eq!(yes_no(y), Some(true), "{y}");
        }
        for n in ["no", "N", "false", "OFF", "0"] {
            assert_eq!(yes_no(n), Some(false), "{n}");
        }
        assert_eq!(yes_no("sometimes"), None);
        assert_eq!(yes_no(""), None);
    }
}
