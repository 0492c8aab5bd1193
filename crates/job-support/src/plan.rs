//! What `plan` prints: the changes a run would make, in the job's own words (issue a client,
//! renew an intermediate, restore a Secret) and as the store writes behind them, as a table or
//! JSON; and the exit code that tells a script whether anything is pending.

use std::fmt::Write as _;
use std::process::ExitCode;

use serde::Serialize;

use crate::cli::Output;
use crate::store::plan::StoreChange;

/// The exit code of a `plan` that found changes to make (nothing was written). 0 means a run
/// would write nothing.
pub const CHANGES_PENDING: u8 = 10;

/// One change a run would make, in the job's terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// A verb: `issue`, `renew`, `revoke`, `create`, `restore`, `sign-crl`.
    pub action: String,
    /// What it acts on: `client alice`, `cluster nas`, `Secret istio-system/cacerts`.
    pub object: String,
    /// Why, or what exactly, in a few words.
    pub detail: String,
}

impl Change {
    /// A change.
    pub fn new(
        action: impl Into<String>,
        object: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            action: action.into(),
            object: object.into(),
            detail: detail.into(),
        }
    }
}

/// The outcome of a `plan`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The job that planned.
    pub job: &'static str,
    /// Where it read (the store, and the target where there is one).
    pub against: String,
    /// Whether a run would change anything.
    pub changes_pending: bool,
    /// The changes, in the job's terms.
    pub changes: Vec<Change>,
    /// The store writes a run would make, field names only.
    pub store_writes: Vec<StoreChange>,
    /// Entries the run would leave alone for an operator, each with its problem.
    pub attention: Vec<Change>,
}

impl Plan {
    /// A plan from what the job found; pending when either list is non-empty.
    #[must_use]
    pub fn new(
        job: &'static str,
        against: String,
        changes: Vec<Change>,
        store_writes: Vec<StoreChange>,
    ) -> Self {
        Self {
            job,
            against,
            changes_pending: !changes.is_empty() || !store_writes.is_empty(),
            changes,
            store_writes,
            attention: Vec::new(),
        }
    }

    /// The same plan, naming entries a run would leave for an operator.
    #[must_use]
    pub fn with_attention(mut self, attention: Vec<Change>) -> Self {
        self.attention = attention;
        self
    }

    /// The plan as `output` asks.
    #[must_use]
    pub fn render(&self, output: Output) -> String {
        match output {
            Output::Json => {
                // Serialising plain strings and numbers cannot fail.
                serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
            }
            Output::Table => self.table(),
        }
    }

    fn table(&self) -> String {
        let mut out = format!(
            "{} plan against {}; nothing was written\n",
            self.job, self.against
        );
        if !self.changes_pending {
            out.push_str("no changes: a run would write nothing\n");
        }
        if !self.changes.is_empty() {
            let rows: Vec<[&str; 3]> = self
                .changes
                .iter()
                .map(|c| [c.action.as_str(), c.object.as_str(), c.detail.as_str()])
                .collect();
            out.push('\n');
            columns(&mut out, ["ACTION", "OBJECT", "DETAIL"], &rows);
        }
        if !self.store_writes.is_empty() {
            let details: Vec<(String, String)> = self
                .store_writes
                .iter()
                .map(|w| {
                    let detail = match &w.action {
                        crate::store::plan::StoreAction::Update { from, to } => {
                            format!("version {from} -> {to}; fields {}", w.fields.join(", "))
                        }
                        crate::store::plan::StoreAction::DestroyVersions(versions) => format!(
                            "versions {}",
                            versions
                                .iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        crate::store::plan::StoreAction::Create => {
                            format!("fields {}", w.fields.join(", "))
                        }
                    };
                    (w.action.verb().to_owned(), detail)
                })
                .collect();
            let rows: Vec<[&str; 3]> = self
                .store_writes
                .iter()
                .zip(&details)
                .map(|(w, (verb, detail))| [verb.as_str(), w.path.as_str(), detail.as_str()])
                .collect();
            out.push('\n');
            columns(&mut out, ["WRITE", "PATH", "DETAIL"], &rows);
        }
        if !self.attention.is_empty() {
            let rows: Vec<[&str; 3]> = self
                .attention
                .iter()
                .map(|c| [c.action.as_str(), c.object.as_str(), c.detail.as_str()])
                .collect();
            out.push_str("\nleft alone, for an operator:\n");
            columns(&mut out, ["STATE", "OBJECT", "PROBLEM"], &rows);
        }
        out
    }

    /// 0 when nothing is pending, [`CHANGES_PENDING`] otherwise.
    #[must_use]
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(if self.changes_pending {
            CHANGES_PENDING
        } else {
            0
        })
    }
}

/// Rows under a header, each column as wide as its widest cell.
fn columns(out: &mut String, header: [&str; 3], rows: &[[&str; 3]]) {
    let width = |i: usize| {
        rows.iter()
            .map(|r| r[i].chars().count())
            .chain([header[i].len()])
            .max()
            .unwrap_or(0)
    };
    let (a, b) = (width(0), width(1));
    for row in std::iter::once(&header).chain(rows) {
        let _ = writeln!(out, "{:<a$}  {:<b$}  {}", row[0], row[1], row[2]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::plan::StoreAction;

    fn plan() -> Plan {
        Plan::new(
            "client-issuer-job",
            "vault http://127.0.0.1:8200 mount secret".into(),
            vec![Change::new("issue", "client alice", "new, 365 days")],
            vec![StoreChange {
                path: "pki/clients/alice".into(),
                action: StoreAction::Create,
                fields: vec!["cert".into(), "p12".into()],
            }],
        )
    }

    #[test]
    fn table_and_json_show_the_same_changes() {
        let table = plan().render(Output::Table);
        assert!(table.contains("ACTION  OBJECT        DETAIL\n"), "{table}");
        assert!(
            table.contains("issue   client alice  new, 365 days\n"),
            "{table}"
        );
        assert!(
            table.contains("create  pki/clients/alice  fields cert, p12\n"),
            "{table}"
        );

        let json: serde_json::Value = serde_json::from_str(&plan().render(Output::Json)).unwrap();
        assert_eq!(json["changes_pending"], true);
        assert_eq!(json["changes"][0]["object"], "client alice");
        assert_eq!(json["store_writes"][0]["action"], "create");
        assert_eq!(json["store_writes"][0]["fields"][1], "p12");
    }

    #[test]
    fn nothing_pending_exits_zero_and_says_so() {
        let empty = Plan::new("bootstrap-job", "dir".into(), vec![], vec![]);
        assert!(!empty.changes_pending);
        assert!(empty.render(Output::Table).contains("no changes"));
        assert_eq!(empty.exit_code(), ExitCode::from(0));
        assert_eq!(plan().exit_code(), ExitCode::from(CHANGES_PENDING));
    }
}
