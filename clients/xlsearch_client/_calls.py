"""What the sync and async clients share: the RPC method handles, request builders and the health messages.

The client ships only the generated *message* module; the method handles (path + serializer + deserializer) are
built from the service descriptor, which is all protoc's `*_pb2_grpc.py` stub does. grpc.health.v1 messages are
built in a private descriptor pool, so the client needs neither grpcio-health-checking nor the server package, and
never clashes with either when they are imported into the same process.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from xlsearch_client._proto import search_pb2 as pb
from xlsearch_client.uploads import ImageId

SERVICE = pb.DESCRIPTOR.services_by_name["ImageSearch"]  # xlsearch.v1.ImageSearch
MODES = {"CL": pb.CL, "CM": pb.CM, "CLM": pb.CLM}


@dataclass(frozen=True)
class Method:
    path: str  # /package.Service/Method
    serialize: Callable[[Any], bytes]
    deserialize: Callable[[bytes], Any]
    client_streaming: bool = False


def _method(name: str) -> Method:
    desc = SERVICE.methods_by_name[name]
    request = getattr(pb, desc.input_type.name)
    response = getattr(pb, desc.output_type.name)
    return Method(
        f"/{SERVICE.full_name}/{name}",
        request.SerializeToString,
        response.FromString,
        client_streaming=desc.client_streaming,
    )


SEARCH = _method("Search")
TAG = _method("Tag")
CAPTION = _method("Caption")
ADD_IMAGES = _method("AddImages")
DELETE_IMAGES = _method("DeleteImages")
GET_STATS = _method("GetStats")


def search_request(
    query: str,
    top_k: int,
    mode: str | None,
    alpha: float | None,
    tags: Iterable[str] | str | None,
    min_score: float | None = None,
    offset: int = 0,
    image: bytes | ImageId | None = None,
) -> pb.SearchRequest:
    """A text search, or with `image` (bytes or an indexed image's id) a search by image; `mode` None leaves it
    to the server (CLM for a text, CM for an image)."""
    if isinstance(tags, str):
        tags = [tags]
    request = pb.SearchRequest(
        query=query, top_k=int(top_k), tags=list(tags or ()), offset=operator.index(offset)
    )
    if mode is not None:
        key = str(mode).strip().upper()
        if key not in MODES:
            raise ValueError(f"unknown mode {mode!r}: use CL, CM or CLM")
        request.mode = MODES[key]
    if alpha is not None:
        if math.isnan(float(alpha)):
            raise ValueError("alpha is NaN")
        request.alpha = float(alpha)
    if min_score is not None:
        if math.isnan(float(min_score)):
            raise ValueError("min_score is NaN")
        request.min_score = float(min_score)
    if image is not None:
        request.image.CopyFrom(image_ref(image))
    return request


def image_ref(image: bytes | ImageId) -> pb.ImageRef:
    """`image`: the encoded image (from `uploads.read_image`) or the id of an indexed image."""
    if isinstance(image, ImageId):
        return pb.ImageRef(image_id=image.id)
    return pb.ImageRef(image_bytes=image)


def tag_request(image: bytes | ImageId, k: int | None, user_tags: Iterable[str] | str) -> pb.TagRequest:
    if isinstance(user_tags, str):
        user_tags = [user_tags]
    request = pb.TagRequest(image=image_ref(image), user_tags=list(user_tags))
    if k is not None:
        request.k = operator.index(k)  # an int, not a float cut to one
    return request


def caption_request(image: bytes | ImageId, n_best: int, recommend: bool) -> pb.CaptionRequest:
    return pb.CaptionRequest(image=image_ref(image), n_best=operator.index(n_best), recommend=bool(recommend))


def delete_request(ids: Iterable[str] | str) -> pb.DeleteImagesRequest:
    return pb.DeleteImagesRequest(ids=[ids] if isinstance(ids, str) else [str(i) for i in ids])


# -- grpc.health.v1 -----------------------------------------------------------------------------------------------


def _health_messages() -> tuple[type[Any], type[Any]]:
    F = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="xlsearch_client/grpc_health_v1.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = proto.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    response = proto.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=F.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=F.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
    )


HealthCheckRequest, HealthCheckResponse = _health_messages()
HEALTH_CHECK = Method(
    "/grpc.health.v1.Health/Check", HealthCheckRequest.SerializeToString, HealthCheckResponse.FromString
)
_STATUS = HealthCheckResponse.DESCRIPTOR.enum_types_by_name["ServingStatus"]


def health_request(service: str) -> Any:
    return HealthCheckRequest(service=service)


def health_status(response: Any) -> str:
    """SERVING, NOT_SERVING, UNKNOWN or SERVICE_UNKNOWN."""
    value = _STATUS.values_by_number.get(response.status)
    return value.name if value is not None else f"UNKNOWN({response.status})"
