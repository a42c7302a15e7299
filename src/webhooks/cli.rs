//! `portcullis webhooks sign` and `portcullis webhooks verify`: the signing schemes on the
//! command line, so partners can test their receivers without a running sidecar.
//!
//! Both read the body from standard input, byte for byte (no newline is added or removed).
//! Exit status: 0 success, 1 a signature that does not verify, 2 a usage mistake (a bad
//! secret, header or option).

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::secret::Secret;
use super::sign::{self, Scheme};

/// Exit status for a signature that does not verify.
const EXIT_REJECTED: u8 = 1;

/// Exit status for a usage mistake.
const EXIT_USAGE: u8 = 2;

/// `stripe`: the signature header when none is named (the policy's default too).
pub const DEFAULT_STRIPE_HEADER: &str = "portcullis-signature";

/// `split`: the id, timestamp and signature headers when none are named (the policy's
/// defaults too).
pub const DEFAULT_SPLIT_HEADERS: [&str; 3] = [
    "x-portcullis-event-id",
    "x-portcullis-timestamp",
    "x-portcullis-signature",
];

/// The `webhooks` subcommands.
#[derive(Debug, Subcommand)]
pub enum WebhooksCommand {
    /// Sign the body read from stdin and print the headers as `Name: value` lines.
    Sign(SignArgs),
    /// Verify the body read from stdin against signature headers; prints `ok` or exits 1.
    Verify(VerifyArgs),
    /// The dead-letter queue of the running sidecar (through its admin socket).
    #[command(subcommand)]
    Dlq(super::dlq_cli::DlqCommand),
    /// Put dead deliveries back in the queue, due now, with their attempts reset.
    Redeliver(super::dlq_cli::RedeliverArgs),
}

/// The scheme names accepted on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemeName {
    /// Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    Standard,
    /// `<header>: t=<ts>,v1=<hex>`.
    Stripe,
    /// Three headers: event id, timestamp, hex signature.
    Split,
}

/// The secret, given inline or in a file (a file keeps it out of the process list).
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub struct SecretArgs {
    /// A signing secret; repeat it to sign or verify with two secrets during a rotation.
    #[arg(long)]
    secret: Vec<String>,
    /// A file holding a signing secret (one trailing newline is ignored); repeatable.
    #[arg(long)]
    secret_file: Vec<PathBuf>,
}

/// `webhooks sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The signature scheme.
    #[arg(long, value_enum)]
    scheme: SchemeName,
    #[command(flatten)]
    secrets: SecretArgs,
    /// The event id (default: a fresh random `msg_…` id).
    #[arg(long)]
    id: Option<String>,
    /// The unix timestamp in seconds (default: now).
    #[arg(long)]
    timestamp: Option<u64>,
    /// Header names: one for `stripe` (the signature header), three for `split` (id,
    /// timestamp, signature, in that order). Default: the policy's defaults.
    #[arg(long = "header", value_name = "NAME")]
    headers: Vec<String>,
}

/// `webhooks verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The signature scheme.
    #[arg(long, value_enum)]
    scheme: SchemeName,
    #[command(flatten)]
    secrets: SecretArgs,
    /// A received header as `Name: value`; repeat for each header.
    #[arg(long = "header", value_name = "NAME: VALUE", required = true)]
    headers: Vec<String>,
    /// The scheme's header names, as `sign --header` takes them (one for `stripe`, three for
    /// `split`). Default: the policy's defaults.
    #[arg(long = "scheme-header", value_name = "NAME")]
    scheme_headers: Vec<String>,
    /// How far the timestamp may be from now, in seconds, either way.
    #[arg(long, default_value_t = sign::DEFAULT_TOLERANCE.as_secs())]
    tolerance: u64,
}

/// Runs one `webhooks` subcommand and returns the process exit status.
pub fn run(command: WebhooksCommand) -> ExitCode {
    let outcome = match command {
        WebhooksCommand::Sign(args) => run_sign(&args),
        WebhooksCommand::Verify(args) => run_verify(&args),
        WebhooksCommand::Dlq(command) => return super::dlq_cli::run_dlq(command),
        WebhooksCommand::Redeliver(args) => return super::dlq_cli::run_redeliver(args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Rejected(reason)) => {
            eprintln!("portcullis: signature rejected: {reason}");
            ExitCode::from(EXIT_REJECTED)
        }
        Err(Failure::Usage(message)) => {
            eprintln!("portcullis: {message}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// How a subcommand failed.
enum Failure {
    /// The signature did not verify (exit 1).
    Rejected(sign::VerifyError),
    /// The command line, a file or stdin was unusable (exit 2).
    Usage(String),
}

fn run_sign(args: &SignArgs) -> Result<(), Failure> {
    let scheme = scheme(args.scheme, &args.headers, "--header")?;
    let secrets = secrets(&scheme, &args.secrets)?;
    let id = match &args.id {
        Some(id) if valid_id(id) => id.clone(),
        Some(_) => {
            return Err(Failure::Usage(
                "--id must be 1 to 256 visible ASCII characters".to_owned(),
            ))
        }
        None => fresh_id()?,
    };
    let timestamp = i64::try_from(args.timestamp.unwrap_or_else(crate::state::unix_now))
        .map_err(|_| Failure::Usage("--timestamp is out of range".to_owned()))?;
    let body = read_stdin()?;
    let mut out = String::new();
    for (name, value) in sign::sign(&scheme, &secrets, &id, timestamp, &body) {
        out.push_str(name.as_str());
        out.push_str(": ");
        out.push_str(value.to_str().unwrap_or_default());
        out.push('\n');
    }
    io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| Failure::Usage(format!("cannot write to stdout: {e}")))
}

fn run_verify(args: &VerifyArgs) -> Result<(), Failure> {
    let scheme = scheme(args.scheme, &args.scheme_headers, "--scheme-header")?;
    let secrets = secrets(&scheme, &args.secrets)?;
    let mut headers = HeaderMap::new();
    for line in &args.headers {
        let (name, value) = parse_header_line(line)?;
        headers.append(name, value);
    }
    let body = read_stdin()?;
    let tolerance = Duration::from_secs(args.tolerance);
    let now = i64::try_from(crate::state::unix_now()).unwrap_or(i64::MAX);
    sign::verify(&scheme, &secrets, &headers, &body, now, tolerance).map_err(Failure::Rejected)?;
    println!("ok");
    Ok(())
}

/// Builds the scheme from its name and the header names given (or the defaults).
fn scheme(name: SchemeName, given: &[String], flag: &str) -> Result<Scheme, Failure> {
    let names = |defaults: &[&str]| -> Result<Vec<HeaderName>, Failure> {
        let texts: Vec<&str> = if given.is_empty() {
            defaults.to_vec()
        } else {
            given.iter().map(String::as_str).collect()
        };
        if texts.len() != defaults.len() {
            return Err(Failure::Usage(format!(
                "{flag} is given {} time(s) for {} header name(s)",
                texts.len(),
                defaults.len()
            )));
        }
        texts
            .into_iter()
            .map(|text| {
                HeaderName::from_bytes(text.trim().as_bytes())
                    .map_err(|_| Failure::Usage(format!("{flag}: {text:?} is not a header name")))
            })
            .collect()
    };
    match name {
        SchemeName::Standard if !given.is_empty() => Err(Failure::Usage(format!(
            "{flag} does not apply to the standard scheme (its header names are fixed)"
        ))),
        SchemeName::Standard => Ok(Scheme::Standard),
        SchemeName::Stripe => {
            let mut names = names(&[DEFAULT_STRIPE_HEADER])?.into_iter();
            match names.next() {
                Some(header) => Ok(Scheme::Stripe { header }),
                None => Err(Failure::Usage(format!("{flag} needs a name"))),
            }
        }
        SchemeName::Split => match names(&DEFAULT_SPLIT_HEADERS)?.as_slice() {
            [id, ts, sig] if id != ts && id != sig && ts != sig => Ok(Scheme::Split {
                id_header: id.clone(),
                timestamp_header: ts.clone(),
                signature_header: sig.clone(),
            }),
            _ => Err(Failure::Usage(format!(
                "{flag}: the three split header names must differ"
            ))),
        },
    }
}

/// Reads every secret given and checks it against the scheme's rule.
fn secrets(scheme: &Scheme, args: &SecretArgs) -> Result<Vec<Secret>, Failure> {
    let mut texts: Vec<zeroize::Zeroizing<String>> = args
        .secret
        .iter()
        .map(|s| zeroize::Zeroizing::new(s.clone()))
        .collect();
    for path in &args.secret_file {
        let mut text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
            Failure::Usage(format!("cannot read --secret-file {}: {e}", path.display()))
        })?);
        if text.ends_with('\n') {
            text.pop();
            if text.ends_with('\r') {
                text.pop();
            }
        }
        texts.push(text);
    }
    texts
        .iter()
        .map(|text| {
            Secret::parse_for(scheme, text).map_err(|e| {
                Failure::Usage(format!("the {} secret is refused: {e}", scheme.name()))
            })
        })
        .collect()
}

/// Splits `Name: value` at the first colon.
fn parse_header_line(line: &str) -> Result<(HeaderName, HeaderValue), Failure> {
    let bad = || Failure::Usage(format!("--header {line:?} is not `Name: value`"));
    let (name, value) = line.split_once(':').ok_or_else(bad)?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
    let value = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
    Ok((name, value))
}

/// An id any scheme can carry in a header.
fn valid_id(id: &str) -> bool {
    (1..=256).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// `msg_` and 24 random hex characters, the shape of a Standard Webhooks message id.
fn fresh_id() -> Result<String, Failure> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes)
        .map_err(|_| Failure::Usage("the random number generator failed".to_owned()))?;
    let mut id = String::from("msg_");
    crate::keys::hex::encode_into(&bytes, &mut id);
    Ok(id)
}

/// The whole of standard input, as bytes.
fn read_stdin() -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    io::stdin()
        .read_to_end(&mut body)
        .map_err(|e| Failure::Usage(format!("cannot read the body from stdin: {e}")))?;
    Ok(body)
}
