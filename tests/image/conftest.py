"""The image tests drive a Docker engine and take minutes: `make test-image` runs them
(after building the images) and sets IMG2IMG_IMAGE_TESTS=1; `make test` leaves them out."""

import os

if not os.environ.get("IMG2IMG_IMAGE_TESTS"):
    collect_ignore_glob = ["test_*.py"]
