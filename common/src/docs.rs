//! The man pages' sections beyond the command line ([`Section`]: exit
//! status, configuration keys, files, ...), which each binary's `manual`
//! module writes from the code. The pages and shell completions themselves
//! are rendered by `cmapp-docgen` (the `docgen` crate, run by
//! `packaging/generate.sh`), so that clap_mangen and clap_complete are not
//! linked into the binaries.

/// A man page section beyond the command line: paragraphs, then tagged items.
#[derive(Debug, Clone, Default)]
pub struct Section {
    pub title: String,
    pub paragraphs: Vec<String>,
    /// `(tag, text)`, rendered as an indented list.
    pub items: Vec<(String, String)>,
}

impl Section {
    pub fn new(title: &str) -> Section {
        Section {
            title: title.to_string(),
            ..Section::default()
        }
    }

    pub fn para(mut self, text: impl Into<String>) -> Section {
        self.paragraphs.push(text.into());
        self
    }

    pub fn item(mut self, tag: impl Into<String>, text: impl Into<String>) -> Section {
        self.items.push((tag.into(), text.into()));
        self
    }
}
