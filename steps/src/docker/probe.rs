//! Probes of the engine a worker runs on: does it answer, does its classic builder
//! build. Each within a time limit, since a wedged engine answers nothing at all.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use futures_util::StreamExt;

/// The engine answers a ping within `limit`.
pub async fn ping(docker: &Docker, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, docker.ping()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("the Docker engine refuses a ping: {e}")),
        Err(_) => Err(format!("the Docker engine did not answer a ping within {limit:?}")),
    }
}

/// The classic builder builds an empty image within `limit`; the image is removed
/// again.
pub async fn classic_build(docker: &Docker, limit: Duration) -> Result<(), String> {
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile = b"FROM scratch\nLABEL slipway.probe=1\n";
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", &dockerfile[..]).map_err(|e| e.to_string())?;
    let context = tar.into_inner().map_err(|e| e.to_string())?;
    let options = bollard::query_parameters::BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .labels(&HashMap::from([("slipway.probe".to_string(), "1".to_string())]))
        .rm(true)
        .build();
    let build = async {
        let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
        let mut image = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| format!("the classic builder fails: {e}"))?;
            if let Some(error) = info.error_detail.and_then(|d| d.message) {
                return Err(format!("the classic builder fails: {error}"));
            }
            if let Some(bollard::models::BuildInfoAux::Default(aux)) = info.aux {
                image = aux.id.or(image);
            }
        }
        Ok(image)
    };
    match tokio::time::timeout(limit, build).await {
        Ok(Ok(image)) => {
            if let Some(image) = image {
                let _ = docker.remove_image(&image, None::<bollard::query_parameters::RemoveImageOptions>, None).await;
            }
            Ok(())
        }
        Ok(Err(why)) => Err(why),
        Err(_) => Err(format!("the classic builder did not build within {limit:?}")),
    }
}
