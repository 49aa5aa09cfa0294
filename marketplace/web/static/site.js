// Tells the server the browser's time zone once, so that times are shown in the viewer's zone.
(function () {
  "use strict";
  if (document.cookie.split("; ").some(function (c) { return c.indexOf("jishi_tz=") === 0; })) return;
  var zone;
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone; } catch (e) { return; }
  if (!zone || !/^[A-Za-z0-9_+\-\/]{1,64}$/.test(zone)) return;
  document.cookie = "jishi_tz=" + zone + "; path=/; max-age=31536000; samesite=lax";
  if (zone !== "UTC" && document.querySelector("time")) window.location.reload();
})();
