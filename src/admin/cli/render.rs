//! Human-readable output of the admin commands: aligned tables for listings, `name  value`
//! blocks for single records.
//!
//! Everything shown comes from the server and passes through [`printable`] first, so a label
//! or evidence reference can never move the cursor or rewrite an operator's terminal.

use std::fmt::Write as _;

use crate::admin::client::printable;
use crate::admin::protocol::{ActionView, KeyView, OrgView};
use crate::keys::RateOverride;

/// A table with a header row; every column but the last is padded to its widest cell.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `name  value` lines with the names padded to one width.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (name, value) in pairs {
        let _ = writeln!(out, "{name:width$}  {value}");
    }
    out
}

fn or_dash(value: Option<&str>) -> String {
    value.map_or_else(|| "-".to_owned(), printable)
}

fn rate(rate: Option<RateOverride>) -> String {
    rate.map_or_else(
        || "policy default".to_owned(),
        |r| format!("{}/min, burst {}", r.per_minute, r.burst),
    )
}

fn list(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        empty.to_owned()
    } else {
        printable(&items.join(", "))
    }
}

/// `keys list`.
pub fn key_table(keys: &[KeyView]) -> String {
    if keys.is_empty() {
        return "no API keys\n".to_owned();
    }
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|key| {
            vec![
                printable(&key.id),
                printable(&key.org),
                key.env.as_str().to_owned(),
                key.status.as_str().to_owned(),
                key.expires_at
                    .as_deref()
                    .map_or_else(|| "never".to_owned(), printable),
                list(&key.scopes, "-"),
                or_dash(key.label.as_deref()),
            ]
        })
        .collect();
    table(
        &["ID", "ORG", "ENV", "STATUS", "EXPIRES", "SCOPES", "LABEL"],
        &rows,
    )
}

/// `keys show`, and the record part of every key answer.
pub fn key_details(key: &KeyView) -> String {
    let mut pairs = vec![
        ("id", printable(&key.id)),
        ("prefix", printable(&key.prefix)),
        ("org", printable(&key.org)),
        ("env", key.env.as_str().to_owned()),
        ("status", key.status.as_str().to_owned()),
        ("scopes", list(&key.scopes, "none")),
        ("label", or_dash(key.label.as_deref())),
        ("created", printable(&key.created_at)),
        (
            "expires",
            key.expires_at
                .as_deref()
                .map_or_else(|| "never".to_owned(), printable),
        ),
        (
            "last used",
            key.last_used_at
                .as_deref()
                .map_or_else(|| "never".to_owned(), printable),
        ),
        (
            "allowed from",
            if key.allow_cidrs.is_empty() {
                "any address".to_owned()
            } else {
                key.allow_cidrs
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ),
        ("rate", rate(key.rate)),
    ];
    if let Some(until) = &key.previous_secret_valid_until {
        pairs.push(("old secret", format!("works until {}", printable(until))));
    }
    if let Some(at) = &key.revoked_at {
        let reason = key
            .revoke_reason
            .map_or_else(String::new, |reason| format!(" ({reason})"));
        pairs.push(("revoked", format!("{}{reason}", printable(at))));
    }
    fields(&pairs)
}

/// What `keys create` and `keys rotate` print to stdout: the headline, the key on a line of
/// its own, and the record.
pub fn minted_key(headline: &str, key: &str, record: &KeyView) -> String {
    format!("{headline}\n\n{key}\n\n{}", key_details(record))
}

/// The warning printed to stderr next to a minted key.
pub const SHOWN_ONCE_WARNING: &str =
    "This key is shown once and stored only as a hash: copy it now. \
It cannot be displayed again; if it is lost, rotate the key.";

/// `orgs list`.
pub fn org_table(orgs: &[OrgView]) -> String {
    if orgs.is_empty() {
        return "no organizations\n".to_owned();
    }
    let rows: Vec<Vec<String>> = orgs
        .iter()
        .map(|org| {
            vec![
                printable(&org.id),
                if org.hipaa_mode { "on" } else { "off" }.to_owned(),
                org.baa.status.to_string(),
                if org.production_ready { "yes" } else { "no" }.to_owned(),
                printable(&org.name),
            ]
        })
        .collect();
    table(&["ID", "HIPAA", "BAA", "LIVE KEYS", "NAME"], &rows)
}

/// `orgs show`, and the answer to every org change.
pub fn org_details(org: &OrgView) -> String {
    let mut pairs = vec![
        ("id", printable(&org.id)),
        ("name", printable(&org.name)),
        (
            "hipaa mode",
            if org.hipaa_mode { "on" } else { "off" }.to_owned(),
        ),
        ("baa", org.baa.status.to_string()),
        ("evidence", or_dash(org.baa.reference.as_deref())),
        ("recorded by", or_dash(org.baa.recorded_by.as_deref())),
        ("recorded at", or_dash(org.baa.recorded_at.as_deref())),
        ("created", printable(&org.created_at)),
    ];
    let live = match (&org.production_blocked_because, org.production_ready) {
        (_, true) => "allowed".to_owned(),
        (Some(reason), false) => format!("refused: {}", printable(reason)),
        (None, false) => "refused".to_owned(),
    };
    pairs.push(("live keys", live));
    fields(&pairs)
}

/// `admin-log`.
pub fn action_table(actions: &[ActionView]) -> String {
    if actions.is_empty() {
        return "no admin actions recorded\n".to_owned();
    }
    let rows: Vec<Vec<String>> = actions
        .iter()
        .map(|action| {
            let kind = serde_json::to_value(action.action)
                .ok()
                .and_then(|value| value.as_str().map(str::to_owned))
                .unwrap_or_default();
            vec![
                action.seq.to_string(),
                printable(&action.at),
                kind,
                printable(&action.actor),
                printable(&action.target),
                or_dash(action.org.as_deref()),
            ]
        })
        .collect();
    table(&["SEQ", "AT", "ACTION", "ACTOR", "TARGET", "ORG"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::protocol::{BaaView, KeyState};
    use crate::keys::Env;
    use crate::orgs::BaaStatus;

    fn key() -> KeyView {
        KeyView {
            id: "0a1b2c3d".into(),
            prefix: "pcl_test_0a1b2c3d".into(),
            org: "acme".into(),
            env: Env::Test,
            scopes: vec!["notes:read".into(), "patients:read".into()],
            label: Some("nightly\u{1b}[2J sync".into()),
            status: KeyState::Active,
            created_at: "2030-01-01T00:00:00Z".into(),
            expires_at: None,
            revoked_at: None,
            revoke_reason: None,
            last_used_at: None,
            previous_secret_valid_until: None,
            allow_cidrs: vec!["10.0.0.0/8".parse().unwrap()],
            rate: Some(RateOverride {
                per_minute: 600,
                burst: 50,
            }),
        }
    }

    #[test]
    fn tables_align_columns() {
        let text = table(
            &["ID", "NAME"],
            &[
                vec!["a".into(), "x".into()],
                vec!["long-id".into(), "y".into()],
            ],
        );
        assert_eq!(text, "ID       NAME\na        x\nlong-id  y\n");
    }

    #[test]
    fn key_output_is_clean_and_complete() {
        let table = key_table(&[key()]);
        assert!(table.starts_with("ID "));
        assert!(table.contains("notes:read, patients:read"));
        assert!(!table.contains('\u{1b}'));
        let details = key_details(&key());
        assert!(details.contains("allowed from  10.0.0.0/8"), "{details}");
        assert!(
            details.contains("rate          600/min, burst 50"),
            "{details}"
        );
        assert!(details.contains("expires       never"));
        assert!(!details.contains('\u{1b}'));
        assert_eq!(key_table(&[]), "no API keys\n");
    }

    #[test]
    fn minted_key_stands_on_its_own_line() {
        let text = minted_key(
            "Created API key 0a1b2c3d",
            "pcl_test_0a1b2c3d_secret",
            &key(),
        );
        assert!(text.lines().any(|line| line == "pcl_test_0a1b2c3d_secret"));
    }

    #[test]
    fn org_output_says_why_live_keys_are_refused() {
        let org = OrgView {
            id: "acme".into(),
            name: "Acme".into(),
            hipaa_mode: false,
            baa: BaaView {
                status: BaaStatus::Pending,
                reference: None,
                recorded_by: Some("uid:0".into()),
                recorded_at: None,
            },
            production_ready: false,
            production_blocked_because: Some("needs HIPAA mode".into()),
            created_at: "2030-01-01T00:00:00Z".into(),
        };
        let details = org_details(&org);
        assert!(
            details.contains("live keys    refused: needs HIPAA mode"),
            "{details}"
        );
        assert!(details.contains("recorded by  uid:0"));
        assert!(org_table(&[org]).contains("acme  off    pending  no         Acme"));
    }
}
