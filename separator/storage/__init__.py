"""Local bucket storage (``<root>/<BucketName-APPID>/<key>``) with atomic writes."""
from .local import LocalStorage, ObjectInfo, atomic_file, file_md5, validate_bucket, validate_key

__all__ = ["LocalStorage", "ObjectInfo", "atomic_file", "file_md5", "validate_bucket", "validate_key"]
