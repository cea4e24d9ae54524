//! Diagnostics: an error message with an optional byte span, rendered with the file name, line,
//! column, the source line and a caret (ariadne).

use crate::graph::Span;
use ariadne::{Config, IndexType, Label, Report, ReportKind, Source};
use std::fmt;

/// One error about the input, pointing into the source when it can.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// What is wrong, as a sentence naming the value or op at fault.
    pub message: String,
    /// Where in the source, if the error comes from parsed text.
    pub span: Option<Span>,
    /// A label under the caret.
    pub label: Option<String>,
    /// Further notes.
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// A diagnostic with a message and no span.
    pub fn new(message: impl Into<String>) -> Diagnostic {
        Diagnostic { message: message.into(), span: None, label: None, notes: Vec::new() }
    }

    /// A diagnostic at `span` (when known).
    pub fn at(message: impl Into<String>, span: Option<Span>) -> Diagnostic {
        Diagnostic { span, ..Diagnostic::new(message) }
    }

    /// Adds a label under the caret.
    pub fn with_label(mut self, label: impl Into<String>) -> Diagnostic {
        self.label = Some(label.into());
        self
    }

    /// Adds a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// Renders the diagnostic against the source it refers to, without colour.
    pub fn render(&self, file: &str, source: &str) -> String {
        let Some(span) = self.span.clone().filter(|s| s.end <= source.len() && s.start <= s.end) else {
            let mut s = format!("error: {}\n  --> {file}\n", self.message);
            for n in &self.notes {
                s.push_str(&format!("  = note: {n}\n"));
            }
            return s;
        };
        let mut report = Report::build(ReportKind::Error, (file, span.clone()))
            .with_config(Config::default().with_color(false).with_index_type(IndexType::Byte))
            .with_message(&self.message);
        // Without colour, ariadne draws the underline and caret only for labels with a message.
        let label = Label::new((file, span)).with_message(self.label.as_deref().unwrap_or("here"));
        report = report.with_label(label);
        for n in &self.notes {
            report = report.with_note(n);
        }
        let mut out = Vec::new();
        report.finish().write((file, Source::from(source)), &mut out).expect("writing to a Vec cannot fail");
        String::from_utf8_lossy(&out).into_owned()
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Diagnostic {}

/// Renders several diagnostics, one after the other.
pub fn render_all(diags: &[Diagnostic], file: &str, source: &str) -> String {
    diags.iter().map(|d| d.render(file, source)).collect::<Vec<_>>().join("")
}
