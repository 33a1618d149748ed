"""Plain Django views, served through daphne and runworker."""
import hashlib
import os

from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt


def hello(request):
    return HttpResponse(f"hello from worker {os.getpid()}", content_type="text/plain")


@csrf_exempt
def upload(request):
    body = request.body
    return JsonResponse({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()})
