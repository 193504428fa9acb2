//! The verifier service, split along its seams:
//!
//! - [`registry`]: hosts (database-backed, cached in memory), registration changes, repair;
//! - [`replicas`]: PostgreSQL leases and the reload of other replicas' changes;
//! - [`scheduler`]: polls every due host with bounded concurrency;
//! - [`round`]: one attestation round, in steps;
//! - [`routes`]: the REST API and who may call what;
//! - [`run`][mod@run]: starting and stopping it all.
//!
//! REST API (mutual TLS; every route needs a client certificate from the configured CA
//! carrying the role `admin`, or `reader` for the read-only routes; see [`routes`]):
//!
//! | route | |
//! |---|---|
//! | `GET /v1/health` | `ok` or `degraded` (unusable hosts, database failing), host count, rounds, replicas and their leases |
//! | `GET /metrics` | Prometheus text ([`crate::ops::metrics`]) |
//! | `GET /v1/hosts` | every host's status |
//! | `POST /v1/hosts` | register ([`crate::model::HostSpec`] JSON); 409 if the name exists |
//! | `GET /v1/hosts/{name}` | one host's status ([`crate::model::HostStatus`]) |
//! | `PATCH /v1/hosts/{name}` | update ([`crate::model::HostPatch`]); a new AK, `tofu` or late-join policy resets the state |
//! | `DELETE /v1/hosts/{name}` | remove the host, its state and history |
//! | `GET /v1/hosts/{name}/verdicts?limit=N` | verdict history, newest first |
//! | `POST /v1/hosts/{name}/attest` | run a round now and return its verdict |
//! | `POST /v1/hosts/{name}/reset` | forget the host's state (repairs an `unusable` host) |
//! | `POST /v1/hosts/{name}/enrol` | enrol the agent's AK by EK credential activation ([`crate::enrol`]) |
//! | `POST /v1/hosts/{name}/enrol/challenge` | the same in two steps: EK, EK certificate and AK in, credential out |
//! | `POST /v1/hosts/{name}/enrol/response` | the activated secret in; single use, expires after 5 minutes |

pub mod registry;
pub mod replicas;
pub mod round;
pub mod routes;
pub mod run;
pub mod scheduler;

pub use registry::{Shared, Stats, Verifier};
pub use run::{run, spawn, Running};
