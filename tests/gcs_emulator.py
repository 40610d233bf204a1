"""The Cloud Storage emulator the gs:// tests start (gcp-storage-emulator), run as its own process:

    python tests/gcs_emulator.py PORT BUCKET

It serves the Cloud Storage JSON API on 127.0.0.1:PORT, in memory, with BUCKET created. One gap
is filled first: the real service sends an object's generation with its bytes (the
`x-goog-generation` response header), and TensorStore, which writes Orbax's checkpoint arrays,
reads it to update a checkpoint's OCDBT manifest (without it: "Malformed StorageGeneration").
"""

import sys
import time

from gcp_storage_emulator.handlers import objects


def _with_generation(download):
    def handler(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status.value < 300:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])
    return handler


objects.download = _with_generation(objects.download)  # before the server module binds its routes

from gcp_storage_emulator.server import create_server  # noqa: E402

if __name__ == "__main__":
    port, bucket = int(sys.argv[1]), sys.argv[2]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
    server.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)
