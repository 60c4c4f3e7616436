-- (after marker.lua) The epoch, for the restorer.
return epoch
