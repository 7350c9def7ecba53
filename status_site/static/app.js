// Status page for Neural Image Restore. Plain JS, no build step, no CDN: it must work on a LAN offline.
// ES modules served as they are (status_site/page.py serves each file of this folder from memory), one
// module a section of the page: api (requests and the token), poll (the loop), one module per section.
import { setupHealth } from "./health.js";
import { setupHistory } from "./history.js";
import { setupInspector } from "./inspector.js";
import { startPolling } from "./poll.js";
import { setupQueueControl } from "./queue-control.js";
import { setupSignIn } from "./signin.js";
import { setupUpload } from "./upload.js";

setupSignIn();
setupUpload();
setupInspector();
setupQueueControl();
setupHealth();
setupHistory();
startPolling();
