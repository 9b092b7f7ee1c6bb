//! Logging in: the password (the URL's, `PGPASSWORD`, or the password file's line for
//! this host, looked up only when the server asks), then cleartext, MD5 or SCRAM-SHA-256
//! (bound to the TLS session with `-PLUS` when both sides can), as the server asks;
//! then the session's parameters up to the first ReadyForQuery, or the refusal.

use std::io;

use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};

use super::conn::{Conn, Error, Kind, err, server_error};
use super::conninfo::{ChannelBinding, Host, Params, Secret};
use super::pgpass;
use super::socket::Io;
use super::tls;

impl Conn {
    pub(super) fn authenticate(
        &mut self,
        p: &Params,
        host: &Host,
        warn: &mut dyn FnMut(String),
    ) -> Result<(), Error> {
        let mut scram: Option<(sasl::ScramSha256, bool)> = None;
        let mut login = Login {
            p,
            host,
            password: None,
        };
        let enc = |e: io::Error| err(Kind::Broken, e.to_string());
        loop {
            match self.message()? {
                backend::Message::AuthenticationOk => {
                    if p.channel_binding == ChannelBinding::Require
                        && !scram.as_ref().is_some_and(|(_, bound)| *bound)
                    {
                        return Err(err(
                            Kind::Auth,
                            "channel_binding=require, but the server did not authenticate with channel binding",
                        ));
                    }
                    break;
                }
                backend::Message::AuthenticationCleartextPassword => {
                    login.unbound("the server asks for a cleartext password, which cannot be bound")?;
                    let pw = login.password(warn)?;
                    frontend::password_message(pw.0.as_bytes(), &mut self.wbuf).map_err(enc)?;
                    self.flush_out()?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    login.unbound("the server asks for an MD5 password, which cannot be bound")?;
                    let pw = login.password(warn)?;
                    let hash = md5_hash(p.user.as_bytes(), pw.0.as_bytes(), body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(enc)?;
                    self.flush_out()?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    scram = Some(self.sasl_begin(&body, &mut login, warn)?);
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let Some((s, _)) = scram.as_mut() else {
                        return Err(err(
                            Kind::Broken,
                            "the server continued a SASL exchange that was never started",
                        ));
                    };
                    s.update(body.data())
                        .map_err(|e| err(Kind::Auth, format!("SCRAM failed: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(enc)?;
                    self.flush_out()?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let Some((s, _)) = scram.as_mut() else {
                        return Err(err(
                            Kind::Broken,
                            "the server ended a SASL exchange that was never started",
                        ));
                    };
                    s.finish(body.data()).map_err(|e| {
                        err(
                            Kind::Auth,
                            format!(
                                "the server's SCRAM proof is wrong ({e}): not the server we meant to reach?"
                            ),
                        )
                    })?;
                }
                backend::Message::ErrorResponse(body) => return Err(server_error(&body, true)),
                backend::Message::AuthenticationGss
                | backend::Message::AuthenticationSspi
                | backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationScmCredential => {
                    return Err(err(
                        Kind::Auth,
                        "the server asks for GSSAPI/SSPI/Kerberos authentication, which this client does not speak",
                    ));
                }
                _ => {}
            }
        }
        // Parameters, the cancel key, notices; then ready, or the database's refusal.
        loop {
            match self.message()? {
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ErrorResponse(body) => return Err(server_error(&body, true)),
                _ => {}
            }
        }
    }

    /// SCRAM's first message: SCRAM-SHA-256-PLUS bound to the TLS session when both sides
    /// can, else SCRAM-SHA-256 saying whether we could have bound (a server that offered
    /// PLUS then refuses a downgrade). Returns the exchange and whether it is bound.
    fn sasl_begin(
        &mut self,
        body: &backend::AuthenticationSaslBody,
        login: &mut Login<'_>,
        warn: &mut dyn FnMut(String),
    ) -> Result<(sasl::ScramSha256, bool), Error> {
        let (mut plain, mut plus) = (false, false);
        let mut mechs = body.mechanisms();
        while let Ok(Some(m)) = fallible_iterator::FallibleIterator::next(&mut mechs) {
            plain |= m == sasl::SCRAM_SHA_256;
            plus |= m == sasl::SCRAM_SHA_256_PLUS;
        }
        let binding = self
            .end_point()
            .filter(|_| login.p.channel_binding != ChannelBinding::Disable);
        let (cb, mech, bound) = match (plus, binding) {
            (true, Some(hash)) => (
                sasl::ChannelBinding::tls_server_end_point(hash),
                sasl::SCRAM_SHA_256_PLUS,
                true,
            ),
            (false, Some(_)) if plain => (sasl::ChannelBinding::unrequested(), sasl::SCRAM_SHA_256, false),
            _ if plain || plus => (sasl::ChannelBinding::unsupported(), sasl::SCRAM_SHA_256, false),
            _ => {
                return Err(err(
                    Kind::Auth,
                    "the server offers no SASL mechanism this client speaks (SCRAM-SHA-256)",
                ));
            }
        };
        if !bound {
            login.unbound(if self.tls {
                "the server does not offer SCRAM-SHA-256-PLUS"
            } else {
                "the session is not encrypted (TLS), so SCRAM cannot be bound to it"
            })?;
        }
        let pw = login.password(warn)?;
        let s = sasl::ScramSha256::new(pw.0.as_bytes(), cb);
        frontend::sasl_initial_response(mech, s.message(), &mut self.wbuf)
            .map_err(|e| err(Kind::Broken, e.to_string()))?;
        self.flush_out()?;
        Ok((s, bound))
    }

    /// The channel binding data of an encrypted session: the server certificate's hash.
    fn end_point(&self) -> Option<Vec<u8>> {
        let Io::Tls(s) = &self.io else {
            return None;
        };
        tls::end_point_hash(s.conn.peer_certificates()?.first()?.as_ref())
    }
}

/// One login's password, looked up once when the server asks for one: the URL's or
/// `PGPASSWORD`, else the password file's line for this host.
struct Login<'a> {
    p: &'a Params,
    host: &'a Host,
    password: Option<Secret>,
}

impl Login<'_> {
    fn password(&mut self, warn: &mut dyn FnMut(String)) -> Result<Secret, Error> {
        if let Some(pw) = self.password.as_ref().or(self.p.password.as_ref()) {
            return Ok(pw.clone());
        }
        let (p, host) = (self.p, self.host);
        match pgpass::lookup(&p.passfile, &host.pgpass_name(), host.port, &p.dbname, &p.user) {
            pgpass::Lookup::Found(pw) => {
                self.password = Some(pw.clone());
                Ok(pw)
            }
            found => {
                if let pgpass::Lookup::Ignored(why) = found {
                    warn(why);
                }
                Err(err(
                    Kind::Auth,
                    format!(
                        "the server asks for a password for user {:?} and none was given (in the URL, PGPASSWORD or {})",
                        p.user,
                        p.passfile.display()
                    ),
                ))
            }
        }
    }

    /// Under `channel_binding=require`, a login that cannot be bound is refused.
    fn unbound(&self, why: &str) -> Result<(), Error> {
        if self.p.channel_binding == ChannelBinding::Require {
            Err(err(Kind::Auth, format!("channel_binding=require, but {why}")))
        } else {
            Ok(())
        }
    }
}
