//! A synchronous PostgreSQL client, as small as reading SmolVM's state needs: libpq's
//! connection rules (`url`, `conninfo`, `pgpass`), TLS with rustls (`tls`), and one session
//! with the startup, authentication and extended-query exchanges of the wire protocol
//! (`socket`, `auth`, `conn`, over `postgres-protocol`'s codec). No async runtime: std sockets with
//! timeouts from the run's deadline.

mod auth;
mod conn;
pub mod conninfo;
mod pgpass;
mod socket;
mod tls;
mod url;

#[cfg(test)]
pub use conn::Column;
pub use conn::{Conn, Error, Kind, Rows, connect};
pub use conninfo::Params;
pub use url::redact;
