//! CRI ImageService: request validation and conversion around `crate::image::ImageService`.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_cri::v1 as cri;
use tonic::{Request, Response, Status};

use super::Shared;
use super::request::image_spec as spec_image;
use super::status::EdgeError;
use crate::image::{Credentials, ImageInfo, manifest::split_user};

pub struct ImageApi(pub Shared);

fn to_cri(info: ImageInfo) -> cri::Image {
    let (uid, username) = split_user(&info.record.user);
    cri::Image {
        size: info.record.size(),
        id: info.record.id.clone(),
        repo_tags: info.record.repo_tags,
        repo_digests: info.record.repo_digests,
        uid: uid.map(|value| cri::Int64Value { value }),
        username,
        spec: Some(cri::ImageSpec {
            image: info.record.id,
            ..Default::default()
        }),
        pinned: info.pinned,
    }
}

#[tonic::async_trait]
impl cri::image_service_server::ImageService for ImageApi {
    async fn list_images(
        &self,
        req: Request<cri::ListImagesRequest>,
    ) -> Result<Response<cri::ListImagesResponse>, Status> {
        let filter = req
            .into_inner()
            .filter
            .and_then(|f| f.image)
            .map(|s| s.image);
        let images = self.0.images.list(filter.as_deref())?;
        Ok(Response::new(cri::ListImagesResponse {
            images: images.into_iter().map(to_cri).collect(),
        }))
    }

    async fn image_status(
        &self,
        req: Request<cri::ImageStatusRequest>,
    ) -> Result<Response<cri::ImageStatusResponse>, Status> {
        let req = req.into_inner();
        let image = spec_image(req.image.as_ref(), "ImageStatus")?;
        tracing::Span::current().record("image", image.as_str());
        let Some(info) = self.0.images.status(&image)? else {
            return Ok(Response::new(cri::ImageStatusResponse::default()));
        };
        let mut extra = HashMap::new();
        if req.verbose {
            let v = serde_json::json!({
                "imageSpec": self.0.images.config_json(&info.record),
                "manifestDigest": info.record.manifest_digest,
                "layers": info.record.layers,
                "pulledAt": info.record.pulled_at,
            });
            extra.insert("info".to_owned(), v.to_string());
        }
        Ok(Response::new(cri::ImageStatusResponse {
            image: Some(to_cri(info)),
            info: extra,
        }))
    }

    async fn pull_image(
        &self,
        req: Request<cri::PullImageRequest>,
    ) -> Result<Response<cri::PullImageResponse>, Status> {
        let req = req.into_inner();
        let image = spec_image(req.image.as_ref(), "PullImage")?;
        tracing::Span::current().record("image", image.as_str());
        let creds = req
            .auth
            .map(|a| Credentials {
                username: a.username,
                password: a.password,
                auth: a.auth,
                identity_token: a.identity_token,
                registry_token: a.registry_token,
            })
            .unwrap_or_default();
        let began = std::time::Instant::now();
        let result = self.0.images.pull(&image, &creds).await;
        self.0.telemetry.pull(result.is_ok(), began.elapsed());
        if result.is_ok() && self.0.config.image.gc.enabled {
            // The pull may have crossed the high watermark; the answer does not wait for it.
            let images = self.0.images.clone();
            tokio::task::spawn_blocking(move || images.enforce_policy());
        }
        // A pull's decompression and download buffers are gone now: hand their pages back
        // instead of keeping them as daemon RSS until the next pull.
        crate::sys::trim_heap();
        Ok(Response::new(cri::PullImageResponse { image_ref: result? }))
    }

    async fn remove_image(
        &self,
        req: Request<cri::RemoveImageRequest>,
    ) -> Result<Response<cri::RemoveImageResponse>, Status> {
        let image = spec_image(req.into_inner().image.as_ref(), "RemoveImage")?;
        tracing::Span::current().record("image", image.as_str());
        let images = self.0.images.clone();
        tokio::task::spawn_blocking(move || images.remove(&image))
            .await
            .map_err(EdgeError::task("RemoveImage"))??;
        Ok(Response::new(cri::RemoveImageResponse {}))
    }

    async fn image_fs_info(
        &self,
        _req: Request<cri::ImageFsInfoRequest>,
    ) -> Result<Response<cri::ImageFsInfoResponse>, Status> {
        let images = self.0.images.clone();
        let (bytes, inodes) = tokio::task::spawn_blocking(move || images.usage())
            .await
            .map_err(EdgeError::task("ImageFsInfo"))?;
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        Ok(Response::new(cri::ImageFsInfoResponse {
            image_filesystems: vec![cri::FilesystemUsage {
                timestamp,
                fs_id: Some(cri::FilesystemIdentifier {
                    mountpoint: self.0.images.image_fs_mountpoint().display().to_string(),
                }),
                used_bytes: Some(cri::UInt64Value { value: bytes }),
                inodes_used: Some(cri::UInt64Value { value: inodes }),
            }],
            container_filesystems: vec![],
        }))
    }
}
