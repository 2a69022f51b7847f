//! The store side of replication: what the sync core's outputs mean for a [`Repo`].
//!
//! Shared by the libp2p driver in [`crate::net`] and the deterministic simulation in `tests/`,
//! so both exercise the same serve and apply code.

use tillmesh_protocol::SignedEntry;
use tillmesh_protocol::VersionVector;
use tillmesh_protocol::sync::{Message, Verdict, plan_serve};

use crate::repo::{IngestOutcome, ReadError, Repo, WriteError};

/// What the store's outcome means to the sync core.
pub fn verdict(outcome: &IngestOutcome) -> Verdict {
    match outcome {
        // Held either way: the chain goes on, and the sync core needs nothing more.
        IngestOutcome::Applied | IngestOutcome::Undone { .. } => Verdict::Applied,
        IngestOutcome::Duplicate => Verdict::Duplicate,
        IngestOutcome::Gap { have } => Verdict::Gap { have: *have },
        IngestOutcome::Deferred { .. } => Verdict::Deferred,
        IngestOutcome::Rejected { .. } => Verdict::Rejected,
        IngestOutcome::Forged { .. } => Verdict::Forged,
    }
}

/// Hands entries to the store in order; returns each with its verdict and the version
/// vector after them.
pub async fn apply(
    repo: &Repo,
    entries: Vec<SignedEntry>,
) -> Result<(Vec<(SignedEntry, Verdict)>, VersionVector), WriteError> {
    let results = repo
        .ingest_many(entries)
        .await?
        .into_iter()
        .map(|(entry, outcome)| {
            let verdict = verdict(&outcome);
            (entry, verdict)
        })
        .collect();
    let vv = repo
        .version_vector()
        .map_err(|e| WriteError::Storage(e.to_string()))?;
    Ok((results, vv))
}

/// Answers a pull from a peer holding `have`: the entries it lacks, bounded, with our version
/// vector as it was when they were read (so `holder` never promises more than was sent unless
/// `more` says so).
pub fn serve(
    repo: &Repo,
    have: &VersionVector,
    entries_max: u32,
    bytes_max: u32,
) -> Result<Message, ReadError> {
    let holder = repo.version_vector()?;
    let plan = plan_serve(have, &holder, entries_max, bytes_max);
    let (entries, more) = repo.entries_in(&plan.ranges, plan.entries_max, plan.bytes_max)?;
    Ok(Message::Entries {
        entries,
        holder,
        more,
    })
}
