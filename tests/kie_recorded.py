"""Answers of the real kie.ai, verbatim, for the client's stand-in of kie.ai.

Copied from the HAR recordings of real traffic in ``shared/kie-reference/apicity-recordings``
(github justintanner/apicity, MIT, April 2026; see that folder's README) and, where marked,
from kie's documentation as quoted in ``kie-api-reference.md``.
"""

from __future__ import annotations

CREATE_T2I = '{"code":200,"msg":"success","data":{"taskId":"f400b7ea65483c2f983d61fdaeeceea8","recordId":"f400b7ea65483c2f983d61fdaeeceea8"}}'

RECORD_T2I_GENERATING = '{"code":200,"msg":"success","data":{"taskId":"f400b7ea65483c2f983d61fdaeeceea8","model":"seedream/5-lite-text-to-image","state":"generating","param":"{\\"input\\":\\"{\\\\\\"aspect_ratio\\\\\\":\\\\\\"16:9\\\\\\",\\\\\\"prompt\\\\\\":\\\\\\"A serene mountain landscape at sunrise, photorealistic\\\\\\",\\\\\\"nsfw_checker\\\\\\":false,\\\\\\"quality\\\\\\":\\\\\\"basic\\\\\\"}\\",\\"model\\":\\"seedream/5-lite-text-to-image\\"}","resultJson":"","failCode":null,"failMsg":null,"costTime":null,"completeTime":null,"createTime":1776484279847}}'

RECORD_T2I_SUCCESS = '{"code":200,"msg":"success","data":{"taskId":"f400b7ea65483c2f983d61fdaeeceea8","model":"seedream/5-lite-text-to-image","state":"success","param":"{\\"input\\":\\"{\\\\\\"aspect_ratio\\\\\\":\\\\\\"16:9\\\\\\",\\\\\\"prompt\\\\\\":\\\\\\"A serene mountain landscape at sunrise, photorealistic\\\\\\",\\\\\\"nsfw_checker\\\\\\":false,\\\\\\"quality\\\\\\":\\\\\\"basic\\\\\\"}\\",\\"model\\":\\"seedream/5-lite-text-to-image\\"}","resultJson":"{\\"resultUrls\\":[\\"https://tempfile.aiquickdraw.com/r/f400b7ea65483c2f983d61fdaeeceea8_1776484324_4xy1vy9u.png\\"]}","failCode":null,"failMsg":null,"costTime":45,"completeTime":1776484325909,"createTime":1776484279847}}'

CREATE_I2I = '{"code":200,"msg":"success","data":{"taskId":"ce18826cf06d8aaca05c28048f3dae6f","recordId":"ce18826cf06d8aaca05c28048f3dae6f"}}'

RECORD_I2I_GENERATING = '{"code":200,"msg":"success","data":{"taskId":"ce18826cf06d8aaca05c28048f3dae6f","model":"seedream/5-lite-image-to-image","state":"generating","param":"{\\"input\\":\\"{\\\\\\"aspect_ratio\\\\\\":\\\\\\"1:1\\\\\\",\\\\\\"image_urls\\\\\\":[\\\\\\"https://static.aiquickdraw.com/tools/example/1764851484363_ScV1s2aq.webp\\\\\\"],\\\\\\"prompt\\\\\\":\\\\\\"Transform the scene into a vibrant cyberpunk cityscape at night, neon lighting, photorealistic\\\\\\",\\\\\\"nsfw_checker\\\\\\":false,\\\\\\"quality\\\\\\":\\\\\\"basic\\\\\\"}\\",\\"model\\":\\"seedream/5-lite-image-to-image\\"}","resultJson":"","failCode":null,"failMsg":null,"costTime":null,"completeTime":null,"createTime":1776485923438}}'

RECORD_I2I_SUCCESS = '{"code":200,"msg":"success","data":{"taskId":"ce18826cf06d8aaca05c28048f3dae6f","model":"seedream/5-lite-image-to-image","state":"success","param":"{\\"input\\":\\"{\\\\\\"aspect_ratio\\\\\\":\\\\\\"1:1\\\\\\",\\\\\\"image_urls\\\\\\":[\\\\\\"https://static.aiquickdraw.com/tools/example/1764851484363_ScV1s2aq.webp\\\\\\"],\\\\\\"prompt\\\\\\":\\\\\\"Transform the scene into a vibrant cyberpunk cityscape at night, neon lighting, photorealistic\\\\\\",\\\\\\"nsfw_checker\\\\\\":false,\\\\\\"quality\\\\\\":\\\\\\"basic\\\\\\"}\\",\\"model\\":\\"seedream/5-lite-image-to-image\\"}","resultJson":"{\\"resultUrls\\":[\\"https://tempfile.aiquickdraw.com/r/ce18826cf06d8aaca05c28048f3dae6f_1776485973_6en52w0y.png\\"]}","failCode":null,"failMsg":null,"costTime":112,"completeTime":1776486035938,"createTime":1776485923438}}'

CREDIT = '{"code":200,"msg":"success","data":5916.25}'

DOWNLOAD_URL_WRONG = '{"code":422,"msg":"url is wrong","data":null}'

UPLOAD_BASE64 = '{"success":true,"code":200,"msg":"File uploaded successfully","data":{"success":true,"fileName":"test-base64.png","filePath":"kieai/136592/images/test-uploads/test-base64.png","downloadUrl":"https://tempfile.redpandaai.co/kieai/136592/images/test-uploads/test-base64.png","fileSize":70,"mimeType":"image/png","uploadedAt":"2026-04-16T07:19:12.862Z"}}'

UPLOAD_STREAM = '{"success":true,"code":200,"msg":"File uploaded successfully","data":{"success":true,"fileName":"1776323952044-dtzo7rcrpdj.png","filePath":"kieai/136592/images/test-uploads/1776323952044-dtzo7rcrpdj.png","downloadUrl":"https://tempfile.redpandaai.co/kieai/136592/images/test-uploads/1776323952044-dtzo7rcrpdj.png","fileSize":70,"mimeType":"image/png","uploadedAt":"2026-04-16T07:19:12.309Z"}}'

#: kie's documented recordInfo example (reference §3.1): ``message`` instead of ``msg``, empty
#: strings instead of nulls, ``param`` with ``input`` as an object.
RECORD_DOCUMENTED = (
    '{"code":200,"message":"success","data":{"taskId":"task_12345678","model":"grok-imagine/text-to-image","state":"success",'
    '"param":"{\\"model\\":\\"grok-imagine/text-to-image\\",\\"callBackUrl\\":\\"https://your-domain.com/api/callback\\",\\"input\\":{\\"prompt\\":\\"Cinematic portrait...\\",\\"aspect_ratio\\":\\"3:2\\"}}",'
    '"resultJson":"{\\"resultUrls\\":[\\"https://example.com/generated-content.jpg\\"]}",'
    '"failCode":"","failMsg":"","completeTime":1698765432000,"createTime":1698765400000,"updateTime":1698765432000}}'
)

#: the documented error bodies of recordInfo (reference §3.1)
RECORD_NULL = '{"code":422,"msg":"recordInfo is null","data":null}'
MISSING_TASK_ID = '{"code":400,"msg":"taskId parameter is required"}'
UNAUTHORIZED = '{"code":401,"msg":"You do not have access permissions"}'
UPLOAD_MISSING_PATH = '{"success":false,"code":400,"msg":"Missing required parameter: uploadPath"}'

#: a Seedream 4.0 success callback (reference §4.1, kie's v4 page)
CALLBACK_SUCCESS = (
    '{"code":200,"msg":"Playground task completed successfully.",'
    '"data":{"taskId":"558a0e58d58a6cb69e5c6a55170398da","model":"bytedance/seedream-v4-text-to-image","state":"success",'
    '"param":"{\\"input\\":\\"{\\\\\\"seed\\\\\\":-88165251,\\\\\\"image_size\\\\\\":\\\\\\"square_hd\\\\\\",\\\\\\"image_resolution\\\\\\":\\\\\\"1K\\\\\\",\\\\\\"max_images\\\\\\":1,\\\\\\"prompt\\\\\\":\\\\\\"a fox\\\\\\",\\\\\\"nsfw_checker\\\\\\":false}\\",\\"callBackUrl\\":\\"https://example.com/cb\\",\\"model\\":\\"bytedance/seedream-v4-text-to-image\\"}",'
    '"resultJson":"{\\"resultUrls\\":[\\"https://tempfile.aiquickdraw.com/p/558a0e58d58a6cb69e5c6a55170398da_1_1786413281_4092.jpg\\"]}",'
    '"costTime":21,"createTime":1786413258000,"completeTime":1786413282000,"updateTime":1786413282000,"creditsConsumed":5}}'
)

#: a failure callback (reference §4.1, kie's Wan 3.0 page; same envelope for all Market models)
CALLBACK_FAIL = (
    '{"code":501,"msg":"Playground task failed.",'
    '"data":{"taskId":"bd8f0e58d58a6cb69e5c6a55170398da","model":"seedream/4.5-edit","state":"fail","param":"{}",'
    '"failCode":"400","failMsg":"content policy","costTime":89,"creditsConsumed":0}}'
)

#: base64 uploads as real kie.ai took them (file-base64-upload recordings): a plain-text file
#: and a 70-byte PNG that Pillow cannot decode (its IHDR checksum is wrong); both answered 200
UPLOAD_TEXT_REQUEST = (
    '{"base64Data":"SGVsbG8gV29ybGQ=","uploadPath":"documents/test-uploads","fileName":"test.txt"}'
)

UPLOAD_TEXT = '{"success":true,"code":200,"msg":"File uploaded successfully","data":{"success":true,"fileName":"test.txt","filePath":"kieai/136592/documents/test-uploads/test.txt","downloadUrl":"https://tempfile.redpandaai.co/kieai/136592/documents/test-uploads/test.txt","fileSize":11,"mimeType":"text/plain","uploadedAt":"2026-04-16T07:19:10.400Z"}}'

UPLOAD_PNG_REQUEST = '{"base64Data":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFCcSAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==","uploadPath":"images/test-uploads","fileName":"test-base64.png","mimeType":"image/png"}'

#: file-stream-upload (wan-27-i2v recording): an ``uploadPath`` with a dot, made a folder
UPLOAD_DOTTED_FOLDER = '{"success":true,"code":200,"msg":"File uploaded successfully","data":{"success":true,"fileName":"1775638903493-8uhskrvrrtt.jpg","filePath":"kieai/136592/uploads/1775638903039_cat1.jpg/1775638903493-8uhskrvrrtt.jpg","downloadUrl":"https://tempfile.redpandaai.co/kieai/136592/uploads/1775638903039_cat1.jpg/1775638903493-8uhskrvrrtt.jpg","fileSize":83558,"mimeType":"image/jpeg","uploadedAt":"2026-04-08T09:01:43.780Z"}}'
