//! A BuildKit session of Slipway's own, opened for a build that needs secrets.
//!
//! BuildKit reads `RUN --mount=type=secret` values from the client's session: a
//! gRPC server the client runs over a connection it upgrades at the engine's
//! `/session` endpoint, which the engine calls back into. bollard's session serves
//! registry credentials only, so for such a build this module opens the session
//! first, under the id the build names: the engine registers it before it answers
//! `101 Switching Protocols`, and turns away the second session bollard then tries
//! under the same id, while the build uses this one. Values stay in this process's
//! memory; nothing is written to disk, passed as a build argument, or put in the
//! image.

use std::collections::BTreeMap;
use std::sync::Arc;

use bollard_buildkit_proto::health::health_server::{Health, HealthServer};
use bollard_buildkit_proto::health::{HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard_buildkit_proto::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bollard_buildkit_proto::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard_buildkit_proto::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse, GetTokenAuthorityRequest,
    GetTokenAuthorityResponse, VerifyTokenAuthorityRequest, VerifyTokenAuthorityResponse,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tonic::{Request, Response, Status};

use crate::docker::push::RegistryCredentials;
use crate::{ErrorCode, StepError};

/// The methods the session serves, as the engine is told (it calls no other).
const METHODS: [&str; 2] = ["/moby.buildkit.secrets.v1.Secrets/GetSecret", "/moby.filesync.v1.Auth/Credentials"];
/// The longest answer head the engine sends to the upgrade.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// An open session; it closes when dropped.
pub struct Session {
    serving: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// What the session serves.
#[derive(Clone)]
pub struct Served {
    /// Secret id → value.
    pub secrets: BTreeMap<String, String>,
    /// The registry host of the job's image and its login, for base images there.
    pub registry: Option<(String, RegistryCredentials)>,
}

/// Opens session `id` on the engine at `DOCKER_HOST` (or the default socket).
pub async fn open(id: &str, served: Served) -> Result<Session, StepError> {
    let unsupported = |why: String| StepError::new(ErrorCode::BuildSecretsUnsupported, why);
    let host = std::env::var("DOCKER_HOST").unwrap_or_default();
    if let Some(address) = host.strip_prefix("tcp://").or_else(|| host.strip_prefix("http://")) {
        if std::env::var_os("DOCKER_TLS_VERIFY").is_some_and(|v| !v.is_empty()) {
            return Err(unsupported("build secrets need an engine reached without TLS (a socket or plain tcp)".into()));
        }
        let stream = tokio::net::TcpStream::connect(address).await.map_err(unreachable)?;
        serve(stream, id, served).await
    } else {
        let path = host.strip_prefix("unix://").unwrap_or(if host.is_empty() { "/var/run/docker.sock" } else { &host });
        if host.contains("://") && !host.starts_with("unix://") {
            return Err(unsupported(format!("build secrets cannot reach an engine at {host}")));
        }
        let stream = tokio::net::UnixStream::connect(path).await.map_err(unreachable)?;
        serve(stream, id, served).await
    }
}

fn unreachable(e: std::io::Error) -> StepError {
    StepError::new(ErrorCode::EngineUnavailable, format!("cannot open a build session on the engine: {e}"))
        .with_source(e)
}

/// Upgrades the connection and serves the session's gRPC services on it.
async fn serve<S>(mut stream: S, id: &str, served: Served) -> Result<Session, StepError>
where
    S: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
{
    let mut head = format!(
        "POST /session HTTP/1.1\r\nHost: docker\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\
         X-Docker-Expose-Session-Uuid: {id}\r\nX-Docker-Expose-Session-Name: slipway\r\n"
    );
    for method in METHODS {
        head.push_str(&format!("X-Docker-Expose-Session-Grpc-Method: {method}\r\n"));
    }
    head.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(head.as_bytes()).await.map_err(unreachable)?;
    // Byte by byte: what follows the answer's head is the engine's HTTP/2 preface,
    // which belongs to the gRPC server.
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\n") {
        if answer.len() >= MAX_HEAD_BYTES {
            return Err(StepError::new(
                ErrorCode::EngineUnavailable,
                "the engine's answer to the build session is too long",
            ));
        }
        let byte = stream.read_u8().await.map_err(unreachable)?;
        answer.push(byte);
    }
    let status = String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string();
    if !status.contains(" 101 ") {
        return Err(StepError::new(
            ErrorCode::BuildSecretsUnsupported,
            format!("the engine did not open a build session ({status}); build secrets need BuildKit"),
        ));
    }
    let served = Arc::new(served);
    let router = tonic::transport::Server::builder()
        .add_service(HealthServer::new(Serving))
        .add_service(SecretsServer::new(SecretValues(served.clone())))
        .add_service(AuthServer::new(RegistryAuth(served)));
    let serving = tokio::spawn(async move {
        let incoming = futures_util::stream::iter([Ok::<_, std::io::Error>(stream)]);
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::debug!(error = %e, "build session ended");
        }
    });
    Ok(Session { serving })
}

struct Serving;

#[tonic::async_trait]
impl Health for Serving {
    async fn check(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        Ok(Response::new(HealthCheckResponse { status: 1 }))
    }

    async fn list(&self, _: Request<HealthListRequest>) -> Result<Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("list"))
    }

    type WatchStream = futures_util::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch"))
    }
}

struct SecretValues(Arc<Served>);

#[tonic::async_trait]
impl Secrets for SecretValues {
    async fn get_secret(&self, request: Request<GetSecretRequest>) -> Result<Response<GetSecretResponse>, Status> {
        let id = &request.get_ref().id;
        match self.0.secrets.get(id) {
            Some(value) => Ok(Response::new(GetSecretResponse { data: value.clone().into_bytes() })),
            None => Err(Status::not_found(format!("the job names no build secret `{id}` (build_secrets)"))),
        }
    }
}

struct RegistryAuth(Arc<Served>);

#[tonic::async_trait]
impl Auth for RegistryAuth {
    /// The job's login, for its own image's registry only; none for any other host.
    async fn credentials(&self, request: Request<CredentialsRequest>) -> Result<Response<CredentialsResponse>, Status> {
        let host = &request.get_ref().host;
        let answer = match &self.0.registry {
            Some((own, login)) if own.eq_ignore_ascii_case(host) => {
                CredentialsResponse { username: login.username.clone(), secret: login.password.clone() }
            }
            _ => CredentialsResponse::default(),
        };
        Ok(Response::new(answer))
    }

    async fn fetch_token(&self, _: Request<FetchTokenRequest>) -> Result<Response<FetchTokenResponse>, Status> {
        Err(Status::unimplemented("fetch_token"))
    }

    async fn get_token_authority(
        &self,
        _: Request<GetTokenAuthorityRequest>,
    ) -> Result<Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unavailable("client-side authentication disabled"))
    }

    async fn verify_token_authority(
        &self,
        _: Request<VerifyTokenAuthorityRequest>,
    ) -> Result<Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unavailable("client-side authentication disabled"))
    }
}
