//! What a job says about its build's cache: the images it takes layers from
//! (`cache_from`), or none at all (`"cache": false`). Without either, the build
//! takes its cache from the last image pushed for the job's cache key (its project,
//! repository, Dockerfile and context: `jobs.cache_key`, computed in the database).

use slipway_steps::image_ref::PullRef;

use super::FieldError;

/// The most images a job may name in `cache_from`.
pub const MAX_CACHE_FROM: usize = 8;

/// `cache_from` and `cache` as stored: each image a reference with a registry host
/// (`name:tag` or `name@sha256:…`), none when the cache is off.
pub(super) fn check(cache_from: Option<Vec<String>>, cache: Option<bool>) -> Result<(Vec<String>, bool), FieldError> {
    let cache_from = cache_from.unwrap_or_default();
    let cache = cache.unwrap_or(true);
    if !cache && !cache_from.is_empty() {
        return Err(FieldError::new(
            "cache_from",
            "cache_from names images to reuse while cache is false (build everything afresh): leave one out",
        ));
    }
    if cache_from.len() > MAX_CACHE_FROM {
        return Err(FieldError::new("cache_from", format!("cache_from names more than {MAX_CACHE_FROM} images")));
    }
    for (i, text) in cache_from.iter().enumerate() {
        let field = format!("cache_from[{i}]");
        let image: PullRef = text.parse().map_err(|why| FieldError::new(&field, format!("image `{text}` {why}")))?;
        if image.registry().is_none() {
            return Err(FieldError::new(
                field,
                format!("image `{text}` names no registry host; a cache image is pulled from a registry"),
            ));
        }
    }
    Ok((cache_from, cache))
}

/// The default of `cache` in a stored spec.
pub(super) fn on() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_images_need_a_registry_and_agree_with_the_switch() {
        let images = |list: &[&str]| Some(list.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(check(None, None).unwrap(), (vec![], true));
        assert_eq!(check(None, Some(false)).unwrap(), (vec![], false));
        let ok = check(images(&["127.0.0.1:5000/app:cache"]), None).unwrap();
        assert_eq!(ok, (vec!["127.0.0.1:5000/app:cache".to_string()], true));
        let field = |from, cache| check(from, cache).unwrap_err().field;
        assert_eq!(field(images(&["127.0.0.1:5000/app"]), Some(false)), "cache_from");
        assert_eq!(field(images(&["r.io/a"; 9]), None), "cache_from");
        assert_eq!(field(images(&["r.io/a", "app:1"]), None), "cache_from[1]");
        assert_eq!(field(images(&["r.io/a@sha256:00"]), None), "cache_from[0]");
        assert_eq!(field(images(&["r.io/a\0"]), None), "cache_from[0]");
    }
}
