// Video chat: your camera and microphone (LocalMedia) and one WebRTC
// connection to the stranger (VideoCall). Media goes browser to browser, or
// through the operator's TURN relay; the chat server only relays the
// signalling (SDP offers and answers, ICE candidates) as `signal` frames.

/** How long "Connecting video..." may last before we say it did not work. */
export const CONNECT_TIMEOUT_MS = 30000;

/** Plain words for why the camera could not be used (a getUserMedia error). */
export function cameraProblem(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "You did not allow the camera and microphone, so you'll chat by text. To use video, allow them for this site in your browser's settings and tick Video again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No camera or microphone was found, so you'll chat by text.";
    case "NotReadableError":
    case "AbortError":
      return "Your camera or microphone is in use by another program, so you'll chat by text.";
    default:
      return "Video is not available in this browser, so you'll chat by text.";
  }
}

/** Your camera and microphone: one stream, started on request, stopped completely. */
export class LocalMedia {
  constructor() {
    this.stream = null;
    this.starting = null; // the pending getUserMedia promise
  }

  /** Ask for camera and microphone; resolves to the stream, rejects with the browser's error. */
  start() {
    if (this.stream) return Promise.resolve(this.stream);
    if (this.starting) return this.starting;
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      return Promise.reject(new DOMException("No media devices", "NotSupportedError"));
    }
    const starting = navigator.mediaDevices.getUserMedia({ video: true, audio: true }).then(
      (stream) => {
        if (this.starting !== starting) {
          // Switched off while the browser was asking: let go of the camera at once.
          for (const track of stream.getTracks()) track.stop();
          throw new DOMException("Video was switched off", "AbortError");
        }
        this.starting = null;
        this.stream = stream;
        return stream;
      },
      (error) => {
        if (this.starting === starting) this.starting = null;
        throw error;
      },
    );
    this.starting = starting;
    return starting;
  }

  /** Stop every track (the camera light goes off). */
  stop() {
    this.starting = null;
    if (!this.stream) return;
    for (const track of this.stream.getTracks()) track.stop();
    this.stream = null;
  }

  /** Turn the microphone (`kind` "audio") or camera ("video") on or off without stopping it. */
  setEnabled(kind, enabled) {
    if (!this.stream) return;
    for (const track of this.stream.getTracks()) if (track.kind === kind) track.enabled = enabled;
  }
}

/**
 * One RTCPeerConnection to the stranger of one chat.
 *
 * `send(data)` sends a signal to the stranger; `onState(state)` hears
 * "connecting", "connected", "failed" (never from the constructor: a call
 * starts "connecting"; and nothing after `close()`).
 * Exactly one side is the initiator (`paired.initiator`) and makes the offer.
 */
export class VideoCall {
  constructor({ stream, initiator, iceServers, iceTransportPolicy, remoteVideo, send, onState }) {
    this.initiator = initiator;
    this.remoteVideo = remoteVideo;
    this.send = send;
    this.onState = onState;
    this.closed = false;
    this.pendingCandidates = []; // candidates that came before the remote description
    this.work = Promise.resolve(); // signals are handled one at a time, in order
    this.pc = new RTCPeerConnection({
      iceServers: Array.isArray(iceServers) ? iceServers : [],
      iceTransportPolicy: iceTransportPolicy === "relay" ? "relay" : "all",
    });
    this.timer = setTimeout(() => {
      if (!this.closed && this.pc.connectionState !== "connected") this.report("failed");
    }, CONNECT_TIMEOUT_MS);

    if (stream) {
      for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
    } else {
      // No camera here: still see and hear the stranger.
      this.pc.addTransceiver("video", { direction: "recvonly" });
      this.pc.addTransceiver("audio", { direction: "recvonly" });
    }
    this.pc.addEventListener("track", (event) => {
      if (this.closed) return;
      const [remote] = event.streams;
      if (remote && this.remoteVideo.srcObject !== remote) this.remoteVideo.srcObject = remote;
    });
    this.pc.addEventListener("icecandidate", (event) => {
      if (event.candidate && !this.closed) this.send({ candidate: event.candidate.toJSON() });
    });
    this.pc.addEventListener("connectionstatechange", () => {
      if (this.closed) return;
      const state = this.pc.connectionState;
      if (state === "connected") {
        clearTimeout(this.timer);
        this.report("connected");
      } else if (state === "failed") {
        this.report("failed");
      } else if (state === "disconnected" || state === "connecting") {
        this.report("connecting");
      }
    });
    if (initiator) this.enqueue(() => this.offer());
  }

  report(state) {
    if (!this.closed) this.onState(state);
  }

  enqueue(task) {
    this.work = this.work.then(task).catch(() => {
      // A broken offer or answer: this call will not connect.
      if (!this.closed) this.report("failed");
    });
    return this.work;
  }

  async offer() {
    await this.pc.setLocalDescription(await this.pc.createOffer());
    if (!this.closed) this.send({ sdp: this.pc.localDescription.toJSON() });
  }

  /** A signal from the stranger: `{sdp}` or `{candidate}`; anything else is ignored. */
  receive(data) {
    if (this.closed || data === null || typeof data !== "object") return;
    if (data.sdp && typeof data.sdp === "object") {
      this.enqueue(() => this.description(data.sdp));
    } else if (data.candidate && typeof data.candidate === "object") {
      this.enqueue(() => this.candidate(data.candidate));
    }
  }

  async description(sdp) {
    if (this.closed) return;
    // Only the initiator offers, so an offer here is for the answerer, an answer for the initiator.
    if ((sdp.type === "offer") === this.initiator) return;
    await this.pc.setRemoteDescription(sdp);
    if (sdp.type === "offer") {
      await this.pc.setLocalDescription(await this.pc.createAnswer());
      if (!this.closed) this.send({ sdp: this.pc.localDescription.toJSON() });
    }
    const waiting = this.pendingCandidates;
    this.pendingCandidates = [];
    for (const candidate of waiting) await this.addCandidate(candidate);
  }

  async candidate(candidate) {
    if (this.closed) return;
    if (!this.pc.remoteDescription) {
      this.pendingCandidates.push(candidate);
      return;
    }
    await this.addCandidate(candidate);
  }

  async addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch {
      // One unusable candidate (from a stranger's odd network) does not end the call.
    }
  }

  /** End the call now: the connection closes and the stranger's picture is cleared. */
  close() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    this.pendingCandidates = [];
    this.pc.close();
    this.remoteVideo.srcObject = null;
  }
}
