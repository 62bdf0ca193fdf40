//! A netcheck: the STUN servers and, beside them, the gateway's port-mapping protocols.

use std::time::Duration;

use pinhole::driver::{self, DEFAULT_STUN_SERVERS};
use pinhole::stun::StunUri;

use super::{MAX_SERVERS, MAX_URI_LEN, NetworkTarget};
use crate::error::PinholeError;
use crate::types::{
    DEFAULT_TIMEOUT_MS, GatewayProbe, NetcheckConfig, NetcheckProgress, NetcheckReport,
};

/// The longest netcheck budget accepted.
const MAX_TIMEOUT_MS: u32 = 3_600_000;

/// A netcheck whose arguments were checked.
#[derive(Debug, Clone)]
pub(crate) struct NetcheckPlan {
    uris: Vec<String>,
    budget: Duration,
    hairpinning: bool,
    lifetime: bool,
    portmap: Option<NetworkTarget>,
}

impl NetcheckPlan {
    /// Checks a configuration.
    pub(crate) fn new(config: &NetcheckConfig) -> Result<Self, PinholeError> {
        if config.stun_servers.len() > MAX_SERVERS {
            return Err(PinholeError::invalid(format!(
                "at most {MAX_SERVERS} STUN servers"
            )));
        }
        let uris: Vec<String> = if config.stun_servers.is_empty() {
            DEFAULT_STUN_SERVERS.iter().map(|s| s.to_string()).collect()
        } else {
            config.stun_servers.clone()
        };
        for uri in &uris {
            if uri.len() > MAX_URI_LEN {
                return Err(PinholeError::invalid(format!(
                    "a STUN URI is longer than {MAX_URI_LEN} bytes"
                )));
            }
            let parsed: StunUri = uri
                .parse()
                .map_err(|e| PinholeError::invalid(format!("{uri}: {e}")))?;
            if parsed.secure {
                return Err(PinholeError::Unsupported(format!(
                    "{uri}: stuns: (TLS) is not supported for netcheck"
                )));
            }
        }
        let timeout_ms = match config.timeout_ms {
            0 => DEFAULT_TIMEOUT_MS,
            t if t > MAX_TIMEOUT_MS => {
                return Err(PinholeError::invalid("timeout_ms is over one hour"));
            }
            t => t,
        };
        let target = NetworkTarget::parse(config.gateway.as_deref(), config.local_ip.as_deref())?;
        let portmap = (!config.no_portmap).then_some(target);
        Ok(NetcheckPlan {
            uris,
            budget: Duration::from_millis(timeout_ms.into()),
            hairpinning: !config.no_hairpin,
            lifetime: config.binding_lifetime,
            portmap,
        })
    }

    /// Runs it: resolves the servers, probes them and (unless disabled) the gateway at
    /// the same time, and reports progress through `progress`.
    pub(crate) async fn run(
        self,
        mut progress: impl FnMut(NetcheckProgress),
    ) -> Result<NetcheckReport, PinholeError> {
        let (servers, unresolved) = driver::resolve(&self.uris).await?;
        let notes: Vec<String> = unresolved
            .iter()
            .map(|u| format!("{}: not resolved: {}", u.uri, u.reason))
            .collect();
        if servers.is_empty() {
            return Err(PinholeError::NoServer(if notes.is_empty() {
                "no STUN server could be resolved".into()
            } else {
                notes.join("; ")
            }));
        }
        let labels: Vec<String> = servers.iter().map(|s| s.label.clone()).collect();
        let mut config = pinhole::netcheck::NetcheckConfig::new(servers);
        config.hairpinning = self.hairpinning;
        config.lifetime_probes = if self.lifetime {
            pinhole::netcheck::DEFAULT_LIFETIME_PROBES.to_vec()
        } else {
            Vec::new()
        };
        config.budget = self.budget;
        let portmap = async {
            match self.portmap {
                None => None,
                Some(gateway) => Some(probe_gateway(gateway).await),
            }
        };
        let (report, portmap) = tokio::join!(
            driver::netcheck(config, |ev| {
                if let Some(p) = NetcheckProgress::from_core(ev, &labels) {
                    progress(p);
                }
            }),
            portmap
        );
        Ok(NetcheckReport::from_core(report?, portmap, notes))
    }
}

async fn probe_gateway(to: NetworkTarget) -> GatewayProbe {
    let gateway = to.gateway;
    let target = match to.resolve().await {
        Ok(t) => t,
        Err(e) => return GatewayProbe::failed(gateway, e.to_string()),
    };
    match driver::portmap::probe(target, true).await {
        Ok(r) => GatewayProbe::from_core(target.gateway, &r),
        Err(e) => GatewayProbe::failed(Some(target.gateway), e.to_string()),
    }
}
